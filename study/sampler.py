"""The study's default search policy, as one Optuna sampler.

At four trials a night a policy must be good on night one and still improving on night
ten. The parts, in the order a study meets them:

1. **Warm start** (not here): the night enqueues the baseline and program.md's known-good
   moves (`study.storage.enqueue_warm_start`); Optuna runs enqueued params as they are.
2. **Local refinement** around the incumbent (the feasible trial with the best model
   mean): the user's "change one parameter and see", model-guided. Hundreds of candidate
   moves of one or two parameters are drawn in a trust region and ranked by one posterior
   draw each from a small GP (study/localgp.py: Thompson-like, so early steps are bold)
   times the probability of staying feasible. The region widens after a move that beat
   the incumbent and narrows after misses.
3. **Global model-based search**: the same GP's expected improvement times P(feasible)
   over the whole space (uniform candidates plus local ones).
4. **Optuna's model** explores while no trial is feasible yet: multivariate TPE. (GPSampler
   is opt-in, `use_gp=True`, and not what the night uses: Optuna 5's GPSampler raises
   unless every trial carries the same constraint keys, and an OOM trial records only
   `oom`. Measured with torch installed it changed no figure of
   benchmarks/search_efficiency.py: this fallback runs only before a first feasible
   trial, and the warm start's baseline is feasible.) It also samples any parameter
   outside search_space.yaml.

The searched trials follow `Policy.pattern` ("LLG": two local moves, one global; a local
move that beat the incumbent earns another). The Council constraints come from
`trial.set_constraint` (Optuna 5 keeps them in system attrs as `constraints:<key>`,
read back as FrozenTrial.constraints): one GP per key gives P(feasible), and an OOM's
0.0 is kept out of the score model. The kind of each trial and the trust region are
derived from the study's own history (each trial records its kind in the system attr
`council:move`), so a new sampler every night behaves as one long-lived sampler would,
and optuna-dashboard, resumption and `study.best_trial` stay Optuna's own.

Seeds: the night passes none. A seed (benchmarks) is mixed with the trial number, and
with the study's size for Optuna's model, so even a fixed seed never replays last
night's proposals on a resumed study.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from study import localgp
from study.space import SearchSpace

MOVE_KEY = "council:move"          # what kind of move a trial was; enqueued trials carry fixed_params
LOCAL, GLOBAL, MODEL = "local", "global", "model"
_PATTERN = {"L": LOCAL, "G": GLOBAL, "M": MODEL}


def gp_available() -> bool:
    """GPSampler's optional dependencies (the `gp` extra: torch; scipy comes with it)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "scipy"))


@dataclass(frozen=True)
class Policy:
    """Knobs of the default policy (benchmarks/search_efficiency.py measures them)."""
    # The kinds of the searched (not enqueued) trials, in turn: L a local move, G the small
    # GP's expected improvement over the whole space, M Optuna's model (GPSampler or TPE).
    # With TPE in the turn ("LM") the benchmark saw more vetoed trials for no better score.
    pattern: str = "LLG"
    streak_local: bool = True      # after a local move that beat the incumbent, move locally again
    n_candidates: int = 768
    radius: float = 0.2            # initial trust-region radius, in units of each range
    min_radius: float = 0.03       # below this the region restarts at `radius`
    max_radius: float = 0.5
    misses_to_shrink: int = 2
    two_param_share: float = 0.4   # the rest of the moves change one parameter
    min_step: float = 0.25         # a step is radius x U(min_step, max_step), either way
    max_step: float = 1.5
    # Local moves are ranked by one posterior draw per candidate (Thompson-like: bold,
    # randomised steps while the model knows little), global ones by expected improvement.
    local_acquisition: str = "thompson"    # or "ei"
    # Candidates below this P(feasible) compete only when none is above: a vetoed trial
    # costs a slot of the night, but the best configs sit on the veto's boundary.
    min_feasible: float = 0.3


def distributions(space: SearchSpace, mode: str) -> dict[str, BaseDistribution]:
    """The distributions `SearchSpace.suggest` asks for, so relative params are accepted."""
    out: dict[str, BaseDistribution] = {}
    for name, p in space.for_mode(mode).items():
        if p.type == "int":
            out[name] = IntDistribution(int(p.low), int(p.high), step=p.step or 1, log=p.log)
        else:
            out[name] = FloatDistribution(p.low, p.high, log=p.log)
    return out


# -- coordinates ----------------------------------------------------------------------
def _log_scale(d: BaseDistribution) -> bool:
    """Log parameters, and integer sizes spanning 4x or more (ranks, alphas, iterations):
    those act multiplicatively, and a person moves them by doubling, not by adding 8."""
    if d.log:
        return True
    return isinstance(d, IntDistribution) and d.low > 0 and d.high >= 4 * d.low


def _to_unit(d: BaseDistribution, v: float) -> float:
    lo, hi = float(d.low), float(d.high)
    if _log_scale(d):
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def _from_unit(d: BaseDistribution, u: float) -> float | int:
    u = min(max(u, 0.0), 1.0)
    lo, hi = float(d.low), float(d.high)
    v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if _log_scale(d) else lo + u * (hi - lo)
    if isinstance(d, IntDistribution):
        step = d.step
        return int(min(d.high, d.low + round((v - d.low) / step) * step))
    return float(min(max(v, lo), hi))


def _in_range(d: BaseDistribution, v: float) -> float | int:
    """A value from before search_space.yaml narrowed a range, moved inside it."""
    return v if d._contains(d.to_internal_repr(v)) else _from_unit(d, _to_unit(d, min(max(v, d.low), d.high)))


def _feasible(t: FrozenTrial) -> bool:
    return all(v <= 0.0 for v in t.constraints.values())


MAX_HISTORY = 256   # the GPs' cost grows as n^3: older trials beyond this are left out


@dataclass
class _History:
    names: list[str]
    x: np.ndarray                  # finished trials with every param, in [0, 1]^d
    values: np.ndarray             # maximised orientation; nan where there is no value
    feasible: np.ndarray
    constraints: np.ndarray        # one column per constraint key; a missing key reads 0
    moves: list[str]
    params: list[dict[str, Any]]
    running: np.ndarray            # trials other workers are running now, in [0, 1]^d

    def scored(self) -> np.ndarray:
        """Trials whose value says something about the score surface: the feasible ones,
        and vetoed ones that scored like them. An OOM's 0.0 is a failure code, not a score."""
        ok = self.feasible & np.isfinite(self.values)
        if not ok.any():
            return ok
        floor = self.values[ok].min()
        return np.isfinite(self.values) & (ok | (self.values >= floor))


def _history(study: optuna.Study, dists: dict[str, BaseDistribution]) -> _History:
    names = list(dists)
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
              if all(n in t.params for n in names)][-MAX_HISTORY:]
    keys = sorted({k for t in trials for k in t.constraints})
    rows, vals, feas, cons, moves = [], [], [], [], []
    for t in trials:
        rows.append([_to_unit(dists[n], min(max(t.params[n], dists[n].low), dists[n].high)) for n in names])
        vals.append(sign * t.value if t.state == TrialState.COMPLETE and t.value is not None else math.nan)
        feas.append(t.state == TrialState.COMPLETE and _feasible(t))
        cons.append([float(t.constraints.get(k, 0.0)) for k in keys])
        moves.append(t.system_attrs.get(MOVE_KEY, "warm" if "fixed_params" in t.system_attrs else MODEL))
    d = len(names)
    running = [[_to_unit(dists[n], min(max(t.params[n], dists[n].low), dists[n].high)) for n in names]
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if all(n in t.params for n in names)]
    return _History(names, np.array(rows, dtype=float).reshape(-1, d), np.array(vals, dtype=float),
                    np.array(feas, dtype=bool), np.array(cons, dtype=float).reshape(len(trials), len(keys)), moves,
                    [{n: _in_range(dists[n], t.params[n]) for n in names} for t in trials],
                    np.array(running, dtype=float).reshape(-1, d))


def _radius(h: _History, policy: Policy) -> float:
    """Replay the local moves: a hit (beat the best feasible before it) doubles the radius,
    `misses_to_shrink` misses in a row halve it, and a collapsed region restarts."""
    r, misses, best = policy.radius, 0, -math.inf
    for v, ok, move in zip(h.values, h.feasible, h.moves):
        hit = bool(ok) and v > best
        if move == LOCAL:
            if hit:
                r, misses = min(r * 2.0, policy.max_radius), 0
            else:
                misses += 1
                if misses >= policy.misses_to_shrink:
                    r, misses = r / 2.0, 0
                    if r < policy.min_radius:
                        r = policy.radius
        if hit:
            best = v
    return r


def choose_move(h: _History, policy: Policy) -> str:
    if not h.feasible.any():
        return MODEL                       # nothing to refine yet: the model explores
    searched = [m for m in h.moves if m in (LOCAL, GLOBAL, MODEL)]
    if policy.streak_local and searched and searched[-1] == LOCAL:
        last = len(h.moves) - 1 - h.moves[::-1].index(LOCAL)
        prior = h.values[:last][h.feasible[:last]]
        if h.feasible[last] and (prior.size == 0 or h.values[last] > prior.max()):
            return LOCAL
    return _PATTERN[policy.pattern[len(searched) % len(policy.pattern)]]


def _candidates(i: int, h: _History, dists: dict[str, BaseDistribution],
                policy: Policy, radius: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Moves of one or two parameters from trial i's, snapped to each grid, new ones only;
    the others keep their exact values."""
    d = len(h.names)
    seen = {tuple(np.round(r, 9)) for r in (*h.x, *h.running)}
    out, keys = [], set()
    for _ in range(policy.n_candidates):
        params = dict(h.params[i])
        k = 2 if rng.random() < policy.two_param_share else 1
        for dim in rng.choice(d, size=k, replace=False):
            # A step the eval's noise can see: at least a quarter of the radius.
            step = radius * rng.uniform(policy.min_step, policy.max_step) * rng.choice((-1.0, 1.0))
            name = h.names[dim]
            params[name] = _from_unit(dists[name], h.x[i, dim] + step)
        key = tuple(round(_to_unit(dists[n], params[n]), 9) for n in h.names)
        if key not in seen and key not in keys:
            keys.add(key)
            out.append(params)
    return out


def _uniform(n: int, h: _History, dists: dict[str, BaseDistribution],
             rng: np.random.Generator) -> list[dict[str, Any]]:
    return [{name: _from_unit(dists[name], u) for name, u in zip(h.names, row)}
            for row in rng.random((n, len(h.names)))]


def _model(h: _History) -> tuple[localgp.GP, float, int]:
    """The score model, the best posterior mean among feasible trials, and its trial."""
    scored = h.scored()
    gp = localgp.fit(h.x[scored], h.values[scored])
    ok = h.feasible & np.isfinite(h.values)
    mu_ok, _ = gp.predict(h.x[ok])
    incumbent = int(np.flatnonzero(ok)[int(np.argmax(mu_ok))])   # de-noised: the best mean, not the luckiest draw
    return gp, float(mu_ok.max()), incumbent


def _acquisition(h: _History, dists: dict[str, BaseDistribution], policy: Policy, rng: np.random.Generator,
                 move: str, gp: localgp.GP, best: float, cands: list[dict[str, Any]]) -> np.ndarray:
    xs = np.array([[_to_unit(dists[n], p[n]) for n in h.names] for p in cands])
    mu, sd = gp.predict(xs)
    if move == LOCAL and policy.local_acquisition == "thompson":
        acq = np.exp((rng.normal(mu, sd) - best) / gp.scale)
    else:
        acq = localgp.expected_improvement(mu, sd, best)
    done = np.isfinite(h.values)       # a pruned trial never learnt its constraints
    p_ok = localgp.feasible_probability(xs, h.x[done], h.constraints[done])
    # A vetoed trial costs a whole slot of the night: only likely-feasible candidates
    # compete, when there are any.
    return acq * p_ok * np.where(p_ok >= policy.min_feasible, 1.0, 1e-6)


def propose(h: _History, dists: dict[str, BaseDistribution], policy: Policy,
            rng: np.random.Generator, move: str) -> dict[str, Any]:
    """The candidate with the best acquisition times P(feasible): moves of one or two
    parameters from the incumbent (LOCAL), plus uniform draws over the space (GLOBAL)."""
    gp, best, incumbent = _model(h)
    cands = _candidates(incumbent, h, dists, policy, _radius(h, policy), rng)
    if move == GLOBAL:
        cands += _uniform(policy.n_candidates, h, dists, rng)
    if not cands:
        return {}
    return cands[int(np.argmax(_acquisition(h, dists, policy, rng, move, gp, best, cands)))]


def rate(study: optuna.Study, space: SearchSpace, mode: str, params: dict[str, Any],
         policy: Policy = Policy()) -> tuple[float, float] | None:
    """How this policy's model rates `params` against its own next global pick: (expected
    improvement x P(feasible) of params, the best of the candidates a global move draws).
    None while no trial is feasible (no model yet). Deterministic for a given study."""
    dists = distributions(space, mode)
    h = _history(study, dists)
    if not (h.feasible & np.isfinite(h.values)).any():
        return None
    rng = np.random.default_rng(len(h.values))
    gp, best, incumbent = _model(h)
    pool = _candidates(incumbent, h, dists, policy, _radius(h, policy), rng) + _uniform(policy.n_candidates, h, dists, rng)
    acq = _acquisition(h, dists, policy, rng, GLOBAL, gp, best, [*pool, params])
    return float(acq[-1]), float(acq[:-1].max())


class CouncilSampler(BaseSampler):
    """Model-guided local and global moves, Optuna's GPSampler or TPE to explore (module doc)."""

    def __init__(self, space: SearchSpace, mode: str, *, n_startup_trials: int,
                 seed: int | None = None, policy: Policy = Policy(), use_gp: bool = False):
        self._dists = distributions(space, mode)
        self._n_startup = n_startup_trials
        self._seed = seed
        self._policy = policy
        self._use_gp = bool(use_gp)   # opt-in: see point 4 of the module doc
        self._model: BaseSampler | None = None
        self._moves: dict[int, str] = {}

    def _delegate(self, study: optuna.Study) -> BaseSampler:
        if self._model is None:
            seed = None
            if self._seed is not None:
                seed = (self._seed * 1_000_003 + len(study.get_trials(deepcopy=False))) % 2**31
            if self._use_gp:
                self._model = optuna.samplers.GPSampler(seed=seed, n_startup_trials=self._n_startup)
            else:
                self._model = optuna.samplers.TPESampler(
                    seed=seed, n_startup_trials=self._n_startup, multivariate=True,
                    constant_liar=True)
        return self._model

    def _rng(self, trial: FrozenTrial) -> np.random.Generator:
        return np.random.default_rng(None if self._seed is None else [self._seed, trial.number])

    def reseed_rng(self) -> None:
        self._seed = None
        if self._model is not None:
            self._model.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._delegate(study).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        model = self._delegate(study)
        if "fixed_params" in trial.system_attrs:
            return model.infer_relative_search_space(study, trial)
        h = _history(study, self._dists)
        move = choose_move(h, self._policy)
        self._moves[trial._trial_id] = move
        study._storage.set_trial_system_attr(trial._trial_id, MOVE_KEY, move)
        if move in (LOCAL, GLOBAL):
            return dict(self._dists)
        return model.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        move = self._moves.pop(trial._trial_id, None)
        if move in (LOCAL, GLOBAL):
            params = propose(_history(study, self._dists), self._dists, self._policy, self._rng(trial), move)
            if params:
                return params
            study._storage.set_trial_system_attr(trial._trial_id, MOVE_KEY, MODEL)
            return {}       # every candidate already ran: the independent sampler draws
        return self._delegate(study).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._delegate(study).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._delegate(study).after_trial(study, trial, state, values)


def default_sampler(space: SearchSpace, mode: str, *, n_startup_trials: int,
                    seed: int | None = None) -> BaseSampler:
    """The sampler `study.nightly` uses: see the module docstring."""
    return CouncilSampler(space, mode, n_startup_trials=n_startup_trials, seed=seed)
