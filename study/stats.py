"""Paired statistics over per-case scores: the evidence a verdict rests on.

Why paired: candidate and baseline answer the same cases, so most of the case-to-case
spread (some cases are hard for every adapter) cancels in the per-case difference, and a
bootstrap over those differences says how much of an overall delta one lucky case could
have made (DESIGN §6: one case in 26 once moved the score more than the margin).

Pure numpy; deterministic for a given seed.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

EPS = 1e-9
CHUNK = 1 << 22   # bootstrap indices drawn at once: ~32 MB of int64, whatever the eval's size


@dataclass(frozen=True)
class PairedStats:
    n: int
    delta: float                  # mean paired difference, candidate - baseline
    ci: tuple[float, float]       # 95% percentile bootstrap interval of `delta`
    p_better: float               # share of resamples with mean > 0 (strict: ties are not wins)
    p_not_worse: float            # share with mean >= 0: one-sided p-value of "it got worse"
    tie_rate: float               # share of cases with exactly equal scores

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def _diffs(cand: Sequence[float], base: Sequence[float]) -> np.ndarray:
    c = np.asarray(cand, dtype=float)
    b = np.asarray(base, dtype=float)
    if c.shape != b.shape or c.ndim != 1 or c.size == 0:
        raise ValueError(f"paired statistics need two equal, non-empty 1-D sequences, got {c.shape} and {b.shape}")
    return c - b


def bootstrap_means(d: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n resampled means of d (cases drawn with replacement)."""
    if n < 1:
        raise ValueError(f"the bootstrap needs n >= 1, got {n}")
    m = d.size
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    rows = max(1, CHUNK // m)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        means[start:stop] = d[rng.integers(0, m, size=(stop - start, m))].mean(axis=1)
    return means


def paired_stats(cand: Sequence[float], base: Sequence[float], n: int, seed: int) -> PairedStats:
    d = _diffs(cand, base)
    means = bootstrap_means(d, n, seed)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return PairedStats(n=int(d.size), delta=float(d.mean()), ci=(float(lo), float(hi)),
                       p_better=float(np.mean(means > EPS)), p_not_worse=float(np.mean(means >= -EPS)),
                       tie_rate=float(np.mean(d == 0.0)))


def paired_bootstrap(cand: Sequence[float], base: Sequence[float], n: int, seed: int
                     ) -> tuple[float, tuple[float, float], float]:
    """(P(mean paired delta > 0), 95% percentile CI of the mean delta, share of exact ties).

    Strictly greater: an all-tie resample is not evidence for the candidate, so a candidate
    identical to its baseline gets p_better 0, which is what a gate should see.
    """
    s = paired_stats(cand, base, n, seed)
    return s.p_better, s.ci, s.tie_rate


def bh_adjust(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (step-up, monotone, capped at 1), input order.

    Five categories tested at once: without the correction a null candidate would show at
    least one category "significantly worse" at the 5% level about one time in four.
    """
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return [float(x) for x in out]


def category_seed(seed: int, category: str) -> int:
    """A stable per-category seed: the same category gets the same draws whatever else is there."""
    return (seed * 1_000_003 + zlib.crc32(category.encode())) % (2 ** 32)


def per_category(pairs: Mapping[str, tuple[Sequence[float], Sequence[float]]], n: int, seed: int
                 ) -> dict[str, dict[str, Any]]:
    """{category: PairedStats fields + p_adjusted}, p_adjusted being the BH-adjusted
    p_not_worse across the categories (small: that category very probably got worse)."""
    stats = {cat: paired_stats(c, b, n, category_seed(seed, cat)) for cat, (c, b) in pairs.items()}
    adjusted = bh_adjust([s.p_not_worse for s in stats.values()])
    return {cat: {**s.to_dict(), "p_adjusted": adj} for (cat, s), adj in zip(stats.items(), adjusted)}
