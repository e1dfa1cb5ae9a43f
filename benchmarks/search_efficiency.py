"""Search efficiency: which policy finds a good, safe adapter in the fewest trials?

    .venv/bin/python benchmarks/search_efficiency.py [--seeds 20] [--trials 40] [--first-seed 2000] [--screen 0.5]

Every policy searches the real search space (search_space.yaml, proxy mode) on the
surrogate Council score of benchmarks/surrogate.py (two variants; its docstring describes
the surface: lr × iterations interaction, alpha/rank ridge, OOM region, jailbreak veto,
noise sd 0.012). Optuna policies run as the nightly runs them: an in-memory study,
4 trials a night, a NEW sampler every night on the resumed study, constraints set with
`trial.set_constraint` as objective.py sets them (an OOM: value 0.0, `oom` = 1).

Policies:
- ours: `study.sampler.default_sampler` (imported, not copied) after the warm start that
  the night enqueues (`space.warm_start_configs`, `study.storage.enqueue_warm_start`),
  n_startup_trials 4 as in autoresearch.toml;
- previous default: multivariate TPE, 4 start-up trials, same warm start (what
  study/storage.py's make_sampler ran before this policy);
- random: RandomSampler;
- tpe: TPESampler with Optuna's defaults (10 random start-up trials);
- gp: GPSampler, when its optional dependencies (torch, scipy) import; it sees every
  constraint key on every trial (CONSTRAINT_KEYS: GPSampler raises on trials whose keys differ);
- user: the user's practice: a hand-made ladder of 9 configs (USER_LADDER), then greedy
  one-parameter changes from the best feasible config seen (GREEDY_STEPS);
- hybrid (random proposer) / hybrid (edge proposer): ours with the proposer of
  study/proposer.py (imported: its turns, share 0.3, validation and enqueueing) answered by
  a deliberately bad stand-in instead of a model: a random valid config, or every
  parameter at one end of its range (StandIn). The proposer must cost no more than
  noise even when its model is useless;
- hybrid (informed proposer): the same with a stand-in that knows the surface: the best
  truly feasible of 300 random valid configs, drawn afresh each time (is a good proposal
  let through [proposer] screen?).

Per policy and variant, over the seeds: the median of the best TRUE score among truly
feasible trials after 4, 12 and 40 trials (1, 3 and 10 nights); the trials the median
curve needs to reach random search's median 40-trial best; the share of trials the study
saw as infeasible (OOM or jailbreak veto). Seeds fix the noise and the samplers; each
policy sees the same noise stream per (seed, trial number). The default seeds (2000-2019)
were used for no tuning decision (see --first-seed).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from benchmarks.surrogate import VARIANTS, Outcome, Variant, observe, true_score, truly_feasible  # noqa: E402
from study.config import ProposerSettings  # noqa: E402
from study.proposer import Answer, Proposer  # noqa: E402
from study.sampler import default_sampler, gp_available  # noqa: E402
from study.space import SearchSpace, load_search_space  # noqa: E402
from study.storage import enqueue_warm_start  # noqa: E402

PER_NIGHT = 4
MODE = "proxy"
# GPSampler (Optuna 5.0) stacks trial.constraints by position and raises ValueError ("The
# number of constraints must be the same for all trials") once the study holds trials with
# different keys, as objective.py records them: an OOM sets `oom` only, a judged trial
# `jailbreak` and `regression`. The policies named here get every key on every trial, in
# this order, a missing one as 0.0 (how Optuna reads a missing key: not violated); the
# others see the keys objective.py sets.
CONSTRAINT_KEYS = ("oom", "jailbreak", "regression")
ALL_CONSTRAINT_KEYS = {"gp"}
HYBRIDS = {"hybrid (random proposer)": "random", "hybrid (edge proposer)": "edges",
           "hybrid (informed proposer)": "informed"}
SHARE = 0.3
SCREEN = [ProposerSettings().screen]     # [proposer] screen; --screen sets it

# The user's hand-made ladder: an lr sweep from the baseline, then single changes at a
# middle lr (more iterations, a smaller rank, all 48 layers, more synthetic data).
USER_LADDER = [
    {},
    {"LEARNING_RATE": 1e-5},
    {"LEARNING_RATE": 2e-5},
    {"LEARNING_RATE": 5e-5},
    {"LEARNING_RATE": 1e-4},
    {"LEARNING_RATE": 2e-5, "ITERS": 1200},
    {"LEARNING_RATE": 2e-5, "LORA_RANK": 16},
    {"LEARNING_RATE": 2e-5, "NUM_LAYERS": 48},
    {"LEARNING_RATE": 2e-5, "DATA_MIX_RATIO": 0.3},
]
# One notch of each knob, as a person edits a HYPERPARAMETERS block: (kind, size).
GREEDY_STEPS = {
    "LEARNING_RATE": ("mul", 2.0), "NUM_LAYERS": ("add", 8), "LORA_RANK": ("mul", 2.0),
    "LORA_ALPHA": ("mul", 2.0), "ITERS": ("add", 200), "GRAD_ACCUM": ("add", 2),
    "DROPOUT": ("add", 0.05), "MAX_SEQ_LENGTH": ("add", 256), "DATA_MIX_RATIO": ("add", 0.2),
}


def objective_for(variant: Variant, seed: int, space: SearchSpace, log: list[Outcome],
                  all_keys: bool = False):
    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial, MODE)
        out = observe(params, variant, np.random.default_rng([seed, trial.number, 17]))
        assert set(out.constraints) <= set(CONSTRAINT_KEYS), out.constraints
        constraints = {k: out.constraints.get(k, 0.0) for k in CONSTRAINT_KEYS} if all_keys else out.constraints
        for k, v in constraints.items():
            trial.set_constraint(k, v)
        log.append(out)
        return out.value
    return objective


class StandIn:
    """A stand-in for the proposer's model, answering as JSON as a model would. Useless on
    purpose: a random valid config ("random": uniform, log-uniform where the space is log,
    on each grid) or every parameter at the low or high end of its range ("edges"); or
    informed ("informed"): the best truly feasible of 300 random configs on the surface.
    It reads nothing of the brief."""

    def __init__(self, space: SearchSpace, kind: str, seed: int, variant: Variant):
        self.params, self.kind, self.variant = space.for_mode(MODE), kind, variant
        self.rng = np.random.default_rng([seed, 4242])

    def _value(self, p) -> float:
        if self.kind == "edges":
            return p.low if self.rng.random() < 0.5 else p.high
        if p.log:
            return p.clamp(math.exp(self.rng.uniform(math.log(p.low), math.log(p.high))))
        return p.clamp(self.rng.uniform(p.low, p.high))

    def _config(self) -> dict:
        if self.kind != "informed":
            return {name: self._value(p) for name, p in self.params.items()}
        draws = [{name: self._value(p) for name, p in self.params.items()} for _ in range(300)]
        ok = [c for c in draws if truly_feasible(c, self.variant)] or draws
        return max(ok, key=lambda c: true_score(c, self.variant))

    def __call__(self, messages: list[dict]) -> Answer:
        config = self._config()
        return Answer(json.dumps({"config": config, "hypothesis": f"a {self.kind} stand-in"}))


def make_proposer(space: SearchSpace, kind: str, seed: int, variant: Variant, tally: dict[str, int]) -> Proposer:
    """tally counts the proposer's turns: proposals run, and answers that fell back."""
    settings = ProposerSettings(enabled=True, model=f"stand-in/{kind}", share=SHARE, max_tokens_per_night=10**9,
                                screen=SCREEN[0])

    def count(line: str) -> None:
        key = "fell back" if "fell back" in line else "proposed"
        tally[key] = tally.get(key, 0) + 1
    return Proposer(settings, space, MODE, program_md=(ROOT / "program.md").read_text(),
                    complete=StandIn(space, kind, seed, variant), warm_start_configs=space.warm_start_configs(MODE),
                    echo=count)


def run_sampler(make: Callable[[int], optuna.samplers.BaseSampler], warm: bool, variant: Variant,
                seed: int, n_trials: int, space: SearchSpace, all_keys: bool = False,
                proposer: Proposer | None = None) -> list[Outcome]:
    storage = optuna.storages.InMemoryStorage()
    log: list[Outcome] = []
    objective = objective_for(variant, seed, space, log, all_keys)
    optuna.create_study(storage=storage, study_name="s", direction="maximize")
    night = 0
    while len(log) < n_trials:
        study = optuna.load_study(study_name="s", storage=storage, sampler=make(night))
        if warm:  # the night enqueues it every night; skip_if_exists keeps it once
            enqueue_warm_start(study, space.warm_start_configs(MODE))
        for _ in range(min(PER_NIGHT, n_trials - len(log))):
            if proposer is not None:   # between trials, as run_night calls it
                proposer.before_slot(study, f"night-{night}", PER_NIGHT)
            study.optimize(objective, n_trials=1)
        night += 1
    return log


def _greedy_move(best: dict, name: str, up: bool, space: SearchSpace) -> dict:
    kind, size = GREEDY_STEPS[name]
    p = space.for_mode(MODE)[name]
    v = best[name] * (size if up else 1 / size) if kind == "mul" else best[name] + (size if up else -size)
    return {**best, name: p.clamp(v)}


def _next_greedy(best: dict, tried: list[dict], state: dict, space: SearchSpace) -> tuple[dict, str, bool]:
    """The next knob in turn, one notch in its current direction (the other if that one
    ran already); knobs whose both notches ran are skipped."""
    order = list(GREEDY_STEPS)
    for _ in range(len(order)):
        name = order[state["turn"] % len(order)]
        state["turn"] += 1
        for up in (state[name], not state[name]):
            cand = _greedy_move(best, name, up, space)
            if cand != best and cand not in tried:
                return cand, name, up
    return best, "", True          # every neighbour ran: re-run the best (a person would)


def run_user(variant: Variant, seed: int, n_trials: int, space: SearchSpace) -> list[Outcome]:
    """The ladder, then one notch of one knob at a time from the best feasible config seen
    (by observed score): knobs in turn; a knob keeps its direction after a hit and turns
    round after a miss."""
    base = space.baseline(MODE)
    params = space.for_mode(MODE)
    queue = [{**base, **{k: params[k].clamp(v) for k, v in m.items()}} for m in USER_LADDER]
    tried: list[dict] = []
    log: list[Outcome] = []
    best_value, best = -math.inf, base
    state: dict = {"turn": 0, **{n: True for n in GREEDY_STEPS}}
    while len(log) < n_trials:
        name, up = "", True
        if queue:
            cfg = queue.pop(0)
            if cfg in tried:
                continue
        else:
            cfg, name, up = _next_greedy(best, tried, state, space)
        out = observe(cfg, variant, np.random.default_rng([seed, len(log), 17]))
        tried.append(cfg)
        log.append(out)
        hit = all(v <= 0 for v in out.constraints.values()) and out.value > best_value
        if hit:
            best_value, best = out.value, cfg
        if name:
            state[name] = up if hit else not up
    return log


def policies(space: SearchSpace, seed: int) -> dict[str, tuple[Callable | None, bool]]:
    """name -> (sampler factory taking the night's index, warm start?); None: the user."""
    def ours(night: int):
        return default_sampler(space, MODE, n_startup_trials=4, seed=seed)

    def previous(night: int):
        return optuna.samplers.TPESampler(n_startup_trials=4, multivariate=True, constant_liar=True,
                                          seed=seed * 1000 + night)
    out = {
        "ours": (ours, True),
        "previous default": (previous, True),
        "random": (lambda night: optuna.samplers.RandomSampler(seed=seed * 1000 + night), False),
        "tpe": (lambda night: optuna.samplers.TPESampler(seed=seed * 1000 + night), False),
    }
    if gp_available():
        out["gp"] = (lambda night: optuna.samplers.GPSampler(seed=seed * 1000 + night), False)
    out["user"] = (None, False)
    for name in HYBRIDS:
        out[name] = (ours, True)
    return out


def best_curve(log: list[Outcome]) -> np.ndarray:
    best, curve = -math.inf, []
    for o in log:
        if o.feasible:
            best = max(best, o.true)
        curve.append(best)
    return np.array(curve)


def summarise(curves: dict[str, np.ndarray], infeasible: dict[str, float], n_trials: int) -> list[dict]:
    med = {k: np.median(c, axis=0) for k, c in curves.items()}
    target = med["random"][n_trials - 1]
    rows = []
    for name, m in med.items():
        hit = np.nonzero(m >= target)[0]
        rows.append({"policy": name, "at4": m[min(3, n_trials - 1)], "at12": m[min(11, n_trials - 1)],
                     "at40": m[n_trials - 1], "match": int(hit[0]) + 1 if hit.size else None,
                     "infeasible": infeasible[name]})
    return rows


def run_variant(variant: Variant, seeds: range, n_trials: int, space: SearchSpace,
                only: set[str] | None) -> tuple[list[dict], dict[str, float], dict[str, np.ndarray], dict]:
    tallies: dict[str, dict[str, int]] = {}     # hybrid -> proposer turns: proposed / fell back
    curves: dict[str, list[np.ndarray]] = {}
    infeasible: dict[str, list[float]] = {}
    timing: dict[str, float] = {}
    for seed in seeds:
        for name, (make, warm) in policies(space, seed).items():
            if only and name not in only and name != "random":
                continue
            t0 = time.perf_counter()
            proposer = make_proposer(space, HYBRIDS[name], seed, variant, tallies.setdefault(name, {})) \
                if name in HYBRIDS else None
            log = run_user(variant, seed, n_trials, space) if make is None else \
                run_sampler(make, warm, variant, seed, n_trials, space, name in ALL_CONSTRAINT_KEYS, proposer)
            timing[name] = timing.get(name, 0.0) + time.perf_counter() - t0
            curves.setdefault(name, []).append(best_curve(log))
            infeasible.setdefault(name, []).append(
                float(np.mean([any(v > 0 for v in o.constraints.values()) for o in log])))
    arrays = {k: np.array(v) for k, v in curves.items()}
    rows = summarise(arrays, {k: float(np.mean(v)) for k, v in infeasible.items()}, n_trials)
    return rows, timing, arrays, tallies


def print_table(variant: Variant, rows: list[dict], n_trials: int, timing: dict[str, float]) -> None:
    print(f"\n### {variant.name}: {variant.about}\n")
    print("| policy | best after 4 | after 12 | after 40 | trials to random's 40-trial best | infeasible trials | s per run |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        match = f"{r['match']}" if r["match"] else f"> {n_trials}"
        print(f"| {r['policy']} | {r['at4']:.3f} | {r['at12']:.3f} | {r['at40']:.3f} | {match} | "
              f"{r['infeasible']:.0%} | {timing.get(r['policy'], 0):.1f} |")


def print_paired(curves: dict[str, np.ndarray], n_trials: int) -> None:
    """Ours against the best other policy at 12 and 40 trials, seed by seed."""
    if "ours" not in curves:
        return
    for at in (12, n_trials):
        i = min(at, n_trials) - 1
        rival = max((k for k in curves if k != "ours" and k not in HYBRIDS), key=lambda k: np.median(curves[k][:, i]))
        diff = curves["ours"][:, i] - curves[rival][:, i]
        print(f"\nafter {at}: ours - {rival} (the best other), seed by seed: median {np.median(diff):+.4f}, "
              f"mean {np.mean(diff):+.4f}; ours >= it on {int(np.sum(diff >= 0))}/{len(diff)} seeds", end="")
    print()
    for name in HYBRIDS:
        if name not in curves:
            continue
        for at in (12, n_trials):
            diff = curves[name][:, min(at, n_trials) - 1] - curves["ours"][:, min(at, n_trials) - 1]
            print(f"after {at}: {name} - ours, seed by seed: median {np.median(diff):+.4f}, mean {np.mean(diff):+.4f}, "
                  f"worst {np.min(diff):+.4f}; >= ours on {int(np.sum(diff >= 0))}/{len(diff)} seeds")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--first-seed", type=int, default=2000,
                    help="seeds first-seed, first-seed+1, ...; the policy's knobs were tuned on seeds "
                         "0-19 and checked on 1000-1019: the default measures it on seeds no decision saw")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                    help="repeatable; default: all")
    ap.add_argument("--policy", action="append", help="repeatable; default: all (random always runs)")
    ap.add_argument("--screen", type=float, default=SCREEN[0],
                    help="[proposer] screen for the hybrids (default: autoresearch's default; 0: off)")
    args = ap.parse_args(argv)
    SCREEN[0] = args.screen
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_search_space(ROOT / "search_space.yaml")
    if not gp_available():
        print("gp: GPSampler not measured: its optional dependencies (torch) do not import here")
    started = time.perf_counter()
    for name in args.variant or list(VARIANTS):
        variant = VARIANTS[name]
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        rows, timing, curves, tallies = run_variant(variant, seeds, args.trials, space,
                                           set(args.policy) if args.policy else None)
        print_table(variant, rows, args.trials, {k: v / args.seeds for k, v in timing.items()})
        print_paired(curves, args.trials)
        for name, tally in tallies.items():
            print(f"{name}: {tally.get('proposed', 0)} proposals ran, {tally.get('fell back', 0)} fell back "
                  f"to the sampler ({args.seeds} runs)")
    print(f"\nseeds {args.first_seed}-{args.first_seed + args.seeds - 1} x {args.trials} trials; "
          f"{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
