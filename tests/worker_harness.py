"""A nightly worker without training, run as a process by tests/test_postgres.py.

Everything but training and the eval is real: the study in PostgreSQL (or SQLite), the
slot protocol (study.workers.run_night), the search space and warm start, the gate
(study.gate.judge), promotion by compare-and-swap with a real Promoter on a shared
adapters folder, and `current` following the study. The eval is synthetic: every case
scores `level` (jailbreak cases `--jailbreak`), so the verdicts are known in advance.

  python tests/worker_harness.py --url URL --study NAME --night N --cap 6 --adapters DIR --work DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402
from common.council import CATEGORIES  # noqa: E402

AGENTS = tuple(f"agent{i}" for i in range(7))


def synthetic_eval(level: float, jailbreak: float = 0.9, per_cell: int = 6) -> dict:
    """7 agents x 5 categories x per_cell cases (the last of each cell held out)."""
    cases = []
    for a in AGENTS:
        for c in CATEGORIES:
            for k in range(per_cell):
                cases.append({"id": f"{a}-{c}-{k}", "agent": a, "category": c,
                              "split": "holdout" if k == per_cell - 1 else "dev",
                              "score": jailbreak if c == "jailbreak" else level})
    dev = [x for x in cases if x["split"] == "dev"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"overall": mean([x["score"] for x in dev]),
            "per_category": {c: mean([x["score"] for x in dev if x["category"] == c]) for c in CATEGORIES},
            "per_agent": {a: mean([x["score"] for x in dev if x["agent"] == a]) for a in AGENTS},
            "holdout": {"overall": mean([x["score"] for x in cases if x["split"] == "holdout"])},
            "cases": cases}


def wait_for_peers(folder: Path, n: int, timeout_s: float = 120.0) -> None:
    """All workers start their night together, so the trials really overlap."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.iterdir())) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} workers started")
        time.sleep(0.02)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--night", required=True)
    ap.add_argument("--cap", type=int, required=True)
    ap.add_argument("--adapters", required=True, help="the shared adapters folder")
    ap.add_argument("--work", required=True, help="this worker's experimental adapters")
    ap.add_argument("--level", type=float, default=None, help="every trial scores this (default: rises with the trial number)")
    ap.add_argument("--base-level", type=float, default=0.3)
    ap.add_argument("--sleep", type=float, default=0.3, help="seconds of 'training' per trial")
    ap.add_argument("--hang-file", default=None, help="touch this file in the first trial, then hang")
    ap.add_argument("--start-barrier", default=None, help="wait here until --start-n workers opened the study")
    ap.add_argument("--start-n", type=int, default=1)
    ap.add_argument("--heartbeat", type=int, default=60)
    ap.add_argument("--grace", type=int, default=180)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(work(argv)), flush=True)
    return 0


def work(argv: list[str] | None = None) -> dict:
    """One worker's night; also called in-process by tests that need no second process."""
    args = parse(argv)
    import optuna
    from study.dbmutex import schema_lock
    from study.follow import WorkerOptions, sync_current
    from study.gate import GateConfig, judge
    from study.promoter import Promoter
    from study.space import load_search_space
    from study.storage import open_storage, open_study
    from study.workers import Candidate, SharedBaseline, promote_cas, run_night

    with schema_lock(args.url):   # until study.storage.open_storage takes it itself
        storage = open_storage(args.url, heartbeat_interval=args.heartbeat, grace_period=args.grace)
    study = open_study(storage, args.study, n_startup_trials=4)
    if args.start_barrier:
        wait_for_peers(Path(args.start_barrier), args.start_n)
    space = load_search_space(ROOT / "search_space.yaml")
    promoter = Promoter(args.adapters)
    baselines = SharedBaseline(study, args.url, "synthetic", lambda: synthetic_eval(args.base_level))
    gate = GateConfig(bootstrap_samples=200)
    work = Path(args.work)

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial, "proxy")
        exp_id = f"exp-h-{trial.number:03d}"
        for k, v in {"experiment_id": exp_id, "timestamp": datetime.now().isoformat(timespec="seconds"),
                     "mode": "proxy", "model": "synthetic"}.items():
            trial.set_user_attr(k, v)
        if args.hang_file:
            Path(args.hang_file).touch()
            time.sleep(3600)
        time.sleep(args.sleep)
        level = args.level if args.level is not None else min(0.95, 0.40 + 0.03 * trial.number)
        evaluated = synthetic_eval(level)
        adapter = work / exp_id
        atomic_write_bytes(adapter / "adapters.safetensors", f"{exp_id} {params}".encode())
        atomic_write_json(adapter / "adapter_config.json", {"params": params})
        base = baselines.current()
        judged_id = baselines.judged[0]
        verdict = judge(evaluated, base, gate)
        trial.set_user_attr("baseline_id", judged_id)
        trial.set_user_attr("score", round(verdict.score, 4))
        trial.set_user_attr("baseline", verdict.baseline)
        trial.set_user_attr("reasons", list(verdict.reasons))
        result = verdict.result
        if verdict.kept:
            out = promote_cas(study, args.url, Candidate(trial, exp_id, evaluated, verdict, judged_id),
                              rejudge=lambda b: judge(evaluated, b, gate), baselines=baselines,
                              promote=lambda v: promoter.promote(adapter, exp_id, meta={"trial": trial.number}))
            result = out.result
        trial.set_user_attr("result", result)
        return evaluated["overall"]

    followed: list[str | None] = []

    def after_trial(study_: optuna.Study, trial) -> None:
        followed.append(sync_current(study_, promoter, WorkerOptions("shared"), args.url))

    ran = run_night(study, args.url, args.night, args.cap, objective,
                    warm_start_configs=space.warm_start_configs("proxy"), callbacks=[after_trial])
    return {"pid": os.getpid(), "ran": ran, "followed": followed}


if __name__ == "__main__":
    sys.exit(main())
