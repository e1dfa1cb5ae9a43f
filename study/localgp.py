"""A small Gaussian process in numpy, for ranking local moves around the incumbent.

Optuna's GPSampler needs torch, which this project does not install; a few dozen trials
in nine dimensions need nothing of the kind. Inputs live in [0, 1]^d (log parameters on
a log scale), outputs are standardised. Hyperparameters (one length scale per dimension,
the noise) are chosen by maximising the log marginal likelihood plus a log-normal prior
on the length scales, by a short coordinate search: robust with three points, cheap with
three hundred.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_PRIOR_LS = 0.0               # a length scale of the whole range, give or take a factor
_PRIOR_LS_SD = 1.5            # e^1.5: most knobs matter little, and the data say which do
_NOISE_GRID = (1e-3, 1e-2, 0.05, 0.2)   # variance, in units of the standardised output
_LS_FACTORS = (0.25, 0.5, 2.0, 4.0, 16.0)
_JITTER = 1e-8


def _matern52(a: np.ndarray, b: np.ndarray, ls: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) / ls) ** 2, 0.0).sum(-1))
    s5 = math.sqrt(5.0) * d
    return (1.0 + s5 + 5.0 / 3.0 * d * d) * np.exp(-s5)


def _log_evidence(x: np.ndarray, y: np.ndarray, ls: np.ndarray, noise: float) -> float:
    k = _matern52(x, x, ls) + (noise + _JITTER) * np.eye(len(x))
    try:
        chol = np.linalg.cholesky(k)
    except np.linalg.LinAlgError:
        return -math.inf
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y))
    lml = -0.5 * y @ alpha - np.log(np.diag(chol)).sum()
    prior = -0.5 * (((np.log(ls) - _PRIOR_LS) / _PRIOR_LS_SD) ** 2).sum()
    return float(lml + prior)


@dataclass
class GP:
    x: np.ndarray
    ls: np.ndarray
    noise: float
    mean: float
    scale: float
    chol: np.ndarray
    alpha: np.ndarray

    def predict(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent (noise-free) score."""
        ks = _matern52(xs, self.x, self.ls)
        mu = ks @ self.alpha
        v = np.linalg.solve(self.chol, ks.T)
        var = np.maximum(1.0 - (v * v).sum(0), 1e-12)
        return self.mean + self.scale * mu, self.scale * np.sqrt(var)


def fit(x: np.ndarray, y: np.ndarray, mean: float | None = None) -> GP:
    """Fit on n points of dimension d (n >= 1); far from them the prediction returns to
    `mean` (default: the mean of y)."""
    mean = float(y.mean()) if mean is None else mean
    scale = float(np.sqrt(np.mean((y - mean) ** 2))) or 1.0
    ys = (y - mean) / scale
    ls = np.full(x.shape[1], 1.0)
    noise = 0.01
    best = _log_evidence(x, ys, ls, noise)
    for _ in range(2):
        for nz in _NOISE_GRID:
            e = _log_evidence(x, ys, ls, nz)
            if e > best:
                best, noise = e, nz
        for dim in range(x.shape[1]):
            for f in _LS_FACTORS:
                trial = ls.copy()
                trial[dim] = min(max(trial[dim] * f, 0.02), 20.0)
                e = _log_evidence(x, ys, trial, noise)
                if e > best:
                    best, ls = e, trial
    k = _matern52(x, x, ls) + (noise + _JITTER) * np.eye(len(x))
    chol = np.linalg.cholesky(k)
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, ys))
    return GP(x, ls, noise, mean, scale, chol, alpha)


def expected_improvement(mu: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    z = (mu - best) / sd
    cdf = normal_cdf(z)
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return (mu - best) * cdf + sd * pdf


def normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(z) / math.sqrt(2.0)))


def feasible_probability(xs: np.ndarray, x: np.ndarray, constraints: np.ndarray) -> np.ndarray:
    """P(every constraint <= 0) at xs, one GP per constraint column (independent, as
    GPSampler assumes). A column without variation says nothing about where it changes:
    all feasible gives 1, all infeasible 0."""
    p = np.ones(len(xs))
    for c in constraints.T:
        if np.ptp(c) == 0.0:
            p *= 1.0 if c[0] <= 0.0 else 0.0
            continue
        # Far from every trial, feasibility is a coin flip: the prior mean is the boundary.
        mu, sd = fit(x, c, mean=0.0).predict(xs)
        p *= normal_cdf(-mu / sd)
    return p
