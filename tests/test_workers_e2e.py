"""Real nightly workers on one PostgreSQL study: real training, eval, gate and promotion.

Each worker has its own workdir (its own cache, so its own guard lock, results.tsv and
vault: a machine of its own) and all share the study and the adapters folder
([workers] adapters = "shared"). Budgets are cut to seconds, as in test_study_e2e.py.
The race at the gate is forced in tests/test_postgres.py (worker processes with a
synthetic eval, whose verdicts are known in advance: a real 4-second training cannot
be relied on to clear the gate twice).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from night_fixtures import link_demo_cache, make_workdir
from pg import pg_server, pg_url  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
STUDY = "council-proxy-demo"
# iters_scale 0.04, not 0.02: the sampler's trials may draw ITERS 200 with GRAD_ACCUM 8, and
# train_core refuses fewer iterations than one optimizer update needs.
FAST = {"budget_s = 240\n": "budget_s = 4\n", "iters_scale = 0.5": "iters_scale = 0.04"}

pytestmark = pytest.mark.slow


def _runner_wired() -> bool:
    return "run_night" in (ROOT / "study" / "runner.py").read_text()


requires_wiring = pytest.mark.skipif(not _runner_wired(),
                                     reason="study/runner.py does not run the slot protocol (study.workers) yet")


def worker_dir(tmp: Path, name: str, url: str, shared: Path, demo_assets, extra: dict | None = None) -> Path:
    # The scheduled window opened 10 minutes ago and ends at one_deadline(): every worker
    # started now is in the same night.
    opened = (datetime.now() - timedelta(minutes=10)).strftime("%H:%M")
    wd = make_workdir(tmp / name, pretrain_s=float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20")),
                      overrides={**FAST, 'storage = "sqlite:///autoresearch.db"': f'storage = "{url}"',
                                 'start = "02:00"': f'start = "{opened}"',
                                 'deadline = "05:00"': f'deadline = "{one_deadline()}"',
                                 'adapters = "adapters"': f'adapters = "{shared}"', **(extra or {})})
    link_demo_cache(wd, demo_assets)
    return wd


def wait_for_quiet_machine(timeout: float = 600) -> None:
    """The guard refuses a night beside another training job (exit 4): on a shared machine
    another test's train_core may be running; wait for it rather than flake."""
    import time
    from study.guard import running_training_jobs
    deadline = time.monotonic() + timeout
    while running_training_jobs():
        assert time.monotonic() < deadline, running_training_jobs()
        time.sleep(1)


def nightly(wd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "study.nightly", "--config", str(wd / "autoresearch.toml"),
                             "--demo", "--no-progress", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


REFUSED = 4   # study.nightly's exit code when the guard refuses: nothing was done
CAP_REACHED = 6   # a worker that started after the others had claimed the night's trials


def run_nights(wds: list[Path], *args: str) -> int:
    """One nightly per workdir, all at once; a night the guard refused because another
    test's training job appeared on this shared machine is run again once it is quiet.
    Returns how many were refused (and rerun)."""
    wait_for_quiet_machine()
    procs = {wd: nightly(wd, *args) for wd in wds}
    refused = 0
    while procs:
        again = {}
        for wd, p in procs.items():
            out = p.communicate(timeout=900)[0]
            if p.returncode == REFUSED and "another training job" in out and refused < 6:
                again[wd] = out
                continue
            assert p.returncode in (0, CAP_REACHED), out[-4000:]
        refused += len(again)
        if again:
            wait_for_quiet_machine()
        procs = {wd: nightly(wd, *args) for wd in again}
    return refused


def one_deadline() -> str:
    """The same --deadline for every worker, started in the window: the same night (study/nights.py)."""
    return (datetime.now() + timedelta(hours=3)).strftime("%H:%M")


def check_promotions(study: optuna.Study, shared: Path) -> list[optuna.trial.FrozenTrial]:
    from study.promoter import Promoter
    kept = [t for t in study.trials if t.user_attrs.get("result") == "kept"]
    against = [t.user_attrs["promoted_against"] for t in kept]
    assert len(set(against)) == len(against), f"two promotions against one baseline: {against}"
    events = [e["id"] for e in Promoter(shared).history() if e["action"] == "promote"]
    assert sorted(events) == sorted(t.user_attrs["experiment_id"] for t in kept)
    if kept:
        assert study.user_attrs["baseline"]["id"] == events[-1] == Promoter(shared).current_id()
    return kept


@requires_wiring
def test_three_nightly_workers_run_exactly_six_trials(pg_url, tmp_path, demo_assets):
    shared = tmp_path / "shared-adapters"
    wds = [worker_dir(tmp_path, f"machine{i}", pg_url, shared, demo_assets) for i in range(3)]
    refused = run_nights(wds, "--max-trials", "6", "--deadline", one_deadline())
    study = optuna.load_study(study_name=STUDY, storage=pg_url)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in trials), [(t.number, t.state.name) for t in trials]
    assert len({t.user_attrs["night"] for t in trials}) == 1
    if not refused:                                                   # all three started together
        assert len({t.user_attrs["worker"] for t in trials}) >= 2      # the night was shared
    space = yaml.safe_load((wds[0] / "search_space.yaml").read_text())
    base = {k: v["baseline"] for k, v in space["parameters"].items()}
    assert sum(1 for t in trials if t.params == pytest.approx(base)) == 1   # warm start once
    # results.tsv: every machine's rows agree with the study; the last to finish has all six.
    ids = {t.user_attrs["experiment_id"]: t for t in trials}
    # A worker rerun after the guard refused it may find the six taken: it exits 6 having
    # written nothing, results.tsv included.
    frames = [pd.read_csv(wd / "results.tsv", sep="\t") for wd in wds if (wd / "results.tsv").exists()]
    assert frames
    for df in frames:
        assert df["experiment_id"].is_unique
        for row in df.itertuples():
            t = ids[row.experiment_id]
            assert row.result == t.user_attrs["result"]
            assert row.score == pytest.approx(t.user_attrs["score"])
    assert max(len(df) for df in frames) == 6
    check_promotions(study, shared)


@requires_wiring
def test_migrated_study_resumes_with_a_real_night(pg_url, tmp_path, demo_assets):
    import worker_harness
    sqlite = f"sqlite:///{tmp_path / 'single.db'}"
    # Two finished trials of the demo's study on SQLite, below the base (nothing promoted).
    worker_harness.work(["--url", sqlite, "--study", STUDY, "--night", "2020-01-01", "--cap", "2",
                         "--adapters", str(tmp_path / "a"), "--work", str(tmp_path / "w"),
                         "--level", "0.05", "--sleep", "0"])
    out = subprocess.run([sys.executable, "-m", "study.migrate", "--from", sqlite, "--to", pg_url],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    wd = worker_dir(tmp_path, "mini", pg_url, tmp_path / "adapters", demo_assets)
    run_nights([wd], "--max-trials", "1")
    study = optuna.load_study(study_name=STUDY, storage=pg_url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert study.trials[2].state.name == "COMPLETE" and study.trials[2].user_attrs["night"] != "2020-01-01"
    df = pd.read_csv(wd / "results.tsv", sep="\t")
    assert len(df) == 3 and df["experiment_id"].is_unique
    assert json.loads(df["config"][2]) != json.loads(df["config"][0])   # warm start not repeated
