"""Night utilisation: the share of a night's window spent training and evaluating.

    nice -n 5 .venv/bin/python benchmarks/night_utilization.py [--window-min 5] [--budget-s B]
        [--serving none|managed] [--workdir DIR] [--policies user,ours]

Two demo nights, one after the other in this process, each in a fresh private workdir with
the shared demo build linked in, each run by study.runner.NightRunner (what `python -m
study.nightly --demo` runs; in process because the nightly's guard refuses to start while
anyone's `python -m train_core` runs on this machine):

  user  The user's old policy, scaled down. Their run_overnight.sh ran experiment.sh at
        most 4 times in a 3-hour window, each a fixed-length training (15-30 min) then the
        eval, and stopped; whatever time was left stayed idle. Here: max_trials 4, pruning
        off, every training budget fixed at window/4 minus the expected eval ([demo] eval_s),
        and the night's deadline pushed out of reach, so nothing shortens, skips or packs a
        trial (the script had no such logic). Its 5 AM hard stop is the end of the window: a
        trial still running then is killed, so its work counts as overhead ("cut"), and
        the time past the window as overrun.
  ours  `python -m study.nightly --demo`: pruning on, max_trials 1000 (the deadline ends
        the night), the deadline `window` after the night starts, study/deadline.py's
        trial_fits / training_budget deciding what still fits. Same training budget per
        trial as `user` unless --budget-s says otherwise, so the two differ by policy only.

What is measured (real timestamps, nothing assumed): the window starts when the night is
planned and ends `window` later. Training = the trials' own train_s (the objective's timer
around train_core.run_training: the child process, its model load, the loop, the final
validation, the save); of it, the loop alone = the TrainResult's elapsed_s, read by a thin
timing wrapper around train_core.run_training. Eval = the trials' eval_s (model + adapter
load and the 210 cases). Only trials that ended inside the window count. Trial spans are
Optuna's datetime_start / datetime_complete. Overhead = the rest of the night inside the window:
night start (imports, demo check, corpus, contamination check, storage, canary), inside the
trials (suggest, data, serving stop/start, the verdict and promotion), between trials
(results.tsv, vault, artifacts, the slot) and the night's end (export, report, serving).
Idle = from the night's end to the window's end. Busy share = (training + eval) / window.

The base model's eval (the first baseline) is computed once and copied into each workdir,
as a real night finds it cached from its first night.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from benchmarks import demo_night  # noqa: E402

DEMO_EVAL_S = 40          # autoresearch.toml [demo] eval_s: the expected eval both policies plan with


@dataclass
class Interval:
    kind: str             # "train" | "eval"
    start: float          # time.time()
    end: float
    loop_s: float = 0.0   # train: the training loop alone (TrainResult.elapsed_s)


@dataclass
class NightFigures:
    policy: str
    window_s: float
    trials: int           # ended inside the window
    pruned: int
    train_s: float        # inside the window
    loop_s: float
    eval_s: float
    overhead_s: float
    idle_s: float
    overrun_s: float      # past the window's end (the user's hard stop would have cut it)
    busy_share: float
    phases: dict = field(default_factory=dict)   # the overhead by where it was spent
    per_trial: list = field(default_factory=list)


class TrainLoops:
    """Wraps train_core.run_training (which the night reads when it starts) to keep each
    run's wall-clock span and its TrainResult's loop time; the training itself is unchanged."""

    def __init__(self):
        self.intervals: list[Interval] = []

    def install(self):
        import train_core
        real = train_core.run_training

        def run_training(*a, **kw):
            t0, res = time.time(), None
            try:
                res = real(*a, **kw)
                return res
            finally:
                self.intervals.append(Interval("train", t0, time.time(), getattr(res, "elapsed_s", 0.0) or 0.0))

        train_core.run_training = run_training
        return lambda: setattr(train_core, "run_training", real)


def base_eval(cache: Path) -> Path:
    """The demo base model's eval, computed once (where BaselineKeeper keeps it)."""
    from evaluation import EvalConfig, run_eval, write_eval_results
    from evaluation.results import model_sha256
    model = demo_night.demo_build() / "model"
    path = cache / "baseline" / model_sha256(model)[:16] / "eval_results.json"
    if not path.exists():
        write_eval_results(path, run_eval(EvalConfig(model=str(model), council_path=str(ROOT / "council.yaml")),
                                          progress=False))
    return path


def setup(wd: Path, policy: str, window_s: float, budget_s: float, serving: str, base: Path) -> Path:
    replace = {"budget_s = 240\n": f"budget_s = {budget_s:g}\n",
               "window_min = 60 ": f"window_min = {window_s / 60:g} "}
    if policy == "user":
        replace["prune = true"] = "prune = false"
    if serving == "managed":
        replace.update({'backend = "none"': 'backend = "managed"', "port = 8765": f"port = {demo_night.free_port()}"})
    demo_night.make_workdir(wd, replace)
    demo_night.copy_base_eval(wd, base)
    return wd


def run_policy(policy: str, wd: Path, window_s: float) -> NightFigures:
    import optuna
    loops = TrainLoops()
    restore = loops.install()
    t0 = time.time()
    try:
        if policy == "user":
            # No deadline logic in the user's loop: 4 fixed trials, nothing shortened or skipped.
            p = demo_night.demo_plan(wd, 4, deadline=datetime.now() + timedelta(seconds=100 * window_s))
        else:
            p = demo_night.demo_plan(wd, 1000)
        try:
            demo_night.run_night(p, wd / "night.log")
        finally:
            demo_night.stop_serving(wd)
    finally:
        restore()
    t_end = time.time()
    study = optuna.load_study(study_name=p.study_name, storage=p.settings.storage_url())   # [demo] root moves it
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.datetime_start and t.datetime_start.timestamp() >= t0]
    return account(policy, t0, t_end, window_s, trials, loops.intervals)


def _clip(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def account(policy: str, t0: float, t_end: float, window_s: float, trials,
            loops: list[Interval] = ()) -> NightFigures:
    """Splits [t0, t0 + window_s] into training and eval (the trials' own train_s and eval_s),
    overhead (by phase) and idle. A trial still running at the window's end is what the
    user's hard stop kills: its time inside the window is `cut`, overhead, not busy."""
    w_end = t0 + window_s
    spans = sorted((t.datetime_start.timestamp(), t.datetime_complete.timestamp(), t)
                   for t in trials if t.datetime_complete)
    done = [t for a, b, t in spans if b <= w_end]
    train = sum(t.user_attrs.get("train_s") or 0.0 for t in done)
    ev = sum(t.user_attrs.get("eval_s") or 0.0 for t in done)
    loop = sum(i.loop_s for i in loops
               if any(t.datetime_start.timestamp() <= i.start and i.end <= t.datetime_complete.timestamp() + 1e-3
                      for t in done))
    busy = train + ev
    cut = sum(_clip(a, b, t0, w_end) for a, b, _ in spans if b > w_end)
    cut += sum(_clip(t.datetime_start.timestamp(), t_end, t0, w_end) for t in trials if not t.datetime_complete)
    phases = {"night start": _clip(t0, spans[0][0] if spans else t_end, t0, w_end),
              "inside trials (besides train, eval)": sum(b - a for a, b, _ in spans if b <= w_end) - busy,
              "between trials": sum(_clip(b, a2, t0, w_end) for (_, b, _), (a2, _, _) in zip(spans, spans[1:])),
              "night end": _clip(spans[-1][1] if spans else t_end, t_end, t0, w_end),
              "cut by the hard stop": cut}
    per_trial = [{"number": t.number, "state": t.state.name, "train_s": t.user_attrs.get("train_s"),
                  "eval_s": t.user_attrs.get("eval_s"), "elapsed_s": t.user_attrs.get("elapsed_s"),
                  "stopped_by": t.user_attrs.get("stopped_by"), "result": t.user_attrs.get("result"),
                  "ended_in_window": t in done} for _, _, t in spans]
    return NightFigures(policy, window_s, len(done), sum(t.state.name == "PRUNED" for t in done),
                        round(train, 1), round(loop, 1), round(ev, 1), round(min(t_end, w_end) - t0 - busy, 1),
                        round(max(0.0, w_end - t_end), 1), round(max(0.0, t_end - w_end), 1),
                        round(busy / window_s, 4), {k: round(v, 1) for k, v in phases.items()}, per_trial)


def table(figs: list[NightFigures]) -> str:
    cols = ("policy", "window s", "trials (pruned)", "training s (loop)", "eval s", "overhead s", "idle s",
            "overrun s", "busy share")
    rows = [(f.policy, f"{f.window_s:.0f}", f"{f.trials} ({f.pruned})", f"{f.train_s:.1f} ({f.loop_s:.1f})",
             f"{f.eval_s:.1f}", f"{f.overhead_s:.1f}", f"{f.idle_s:.1f}", f"{f.overrun_s:.1f}",
             f"{f.busy_share:.1%}") for f in figs]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    for f in figs:
        out.append(f"{f.policy} overhead by phase: " + ", ".join(f"{k} {v:.1f} s" for k, v in f.phases.items()))
        for t in f.per_trial:
            out.append(f"  #{t['number']} {t['state']}: train {t['train_s']} s, eval {t['eval_s']} s, "
                       f"elapsed {t['elapsed_s']} s, stopped by {t['stopped_by']}, {t['result']}"
                       + ("" if t["ended_in_window"] else ", past the window's end"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--window-min", type=float, default=5.0, help="each night's window (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"training budget per trial (default: window/4 - {DEMO_EVAL_S} s, the user's fixed length)")
    ap.add_argument("--serving", choices=("none", "managed"), default="none",
                    help="none (default), or managed: a real mlx_lm server stopped and started around every trial")
    ap.add_argument("--policies", default="user,ours", help="comma-separated, run in this order (default: %(default)s)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp folder")
    args = ap.parse_args(argv)
    window_s = args.window_min * 60
    budget = args.budget_s if args.budget_s is not None else window_s / 4 - DEMO_EVAL_S
    if budget <= 0:
        ap.error(f"window/4 leaves no training time after the {DEMO_EVAL_S} s eval: give a longer --window-min")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="night-util-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"workdir {root}; window {window_s:.0f} s, training budget {budget:g} s, serving {args.serving}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    from common.fastblas import enable
    enable()
    base = base_eval(ROOT / ".cache" / "night_utilization")
    figs = []
    for policy in args.policies.split(","):
        wd = setup(root / policy, policy, window_s, budget, args.serving, base)
        f = run_policy(policy, wd, window_s)
        figs.append(f)
        print(f"{policy}: {f.trials} trials, busy {f.busy_share:.1%}; load average {os.getloadavg()[0]:.1f}",
              flush=True)
    (root / "utilization.json").write_text(json.dumps([asdict(f) for f in figs], indent=1))
    print(table(figs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
