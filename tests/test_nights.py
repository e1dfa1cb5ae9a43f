"""Which night a run belongs to (study/nights.py): a run by hand in the afternoon has a cap of
its own and leaves the scheduled night's trials alone; a run in a night whose trials are
taken says so on one line and exits 6."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from night_fixtures import link_demo_cache, make_workdir

ROOT = Path(__file__).resolve().parents[1]
STUDY = "council-proxy-demo"
EXIT_CAP_REACHED = 6
# train_core refuses fewer iterations than one optimizer update needs.
FAST = {"budget_s = 240\n": "budget_s = 4\n", "iters_scale = 0.5": "iters_scale = 0.04"}


def at(hhmm: str, day: int = 4) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return datetime(2026, 12, day, h, m)


def test_a_run_belongs_to_the_window_it_starts_in():
    from study.nights import night_of
    afternoon = night_of(at("14:00"), "02:00", "05:00", "mini:1")
    scheduled = night_of(at("02:00", 5), "02:00", "05:00", "mini:2")
    assert not afternoon.scheduled and afternoon.key == "manual/2026-12-04T14:00:00/mini:1"
    assert scheduled.scheduled and scheduled.key == "2026-12-05T02:00"
    # Every worker started in the window shares its key, whatever its own deadline.
    assert night_of(at("04:59", 5), "02:00", "05:00", "studio:7").key == scheduled.key
    assert night_of(at("05:30", 5), "02:00", "06:00", "mbp:8").key == scheduled.key
    assert night_of(at("05:00", 5), "02:00", "05:00", "mini:3").scheduled is False
    # A window across midnight.
    late = night_of(at("23:30"), "23:00", "05:00", "mini:4")
    assert late.scheduled and late.key == night_of(at("01:00", 5), "23:00", "05:00", "x:1").key == "2026-12-04T23:00"
    # Two runs by hand have a cap each.
    assert night_of(at("15:00"), "02:00", "05:00", "mini:5").key != afternoon.key


def test_rerun_command_sets_max_trials_and_keeps_the_rest():
    from study.nights import rerun_command
    assert rerun_command(["--demo", "--max-trials", "2", "--config", "a b.toml"], 4) == \
        "python -m study.nightly --demo --config 'a b.toml' --max-trials 4"
    assert rerun_command(["--max-trials=3"], 6) == "python -m study.nightly --max-trials 6"


def night_args(wd: Path, *extra: str) -> argparse.Namespace:
    from study.night import add_common_args
    ap = argparse.ArgumentParser()
    add_common_args(ap)
    ap.add_argument("--max-trials", type=int)
    ap.add_argument("--deadline")
    return ap.parse_args(["--config", str(wd / "autoresearch.toml"), "--no-progress", *extra])


def test_an_afternoon_run_leaves_the_scheduled_night_its_trials(tmp_path):
    """The owner's `run up to 2 experiments now` at 14:00 and launchd's run at 02:00, through
    the plan (time injected) and the slot protocol the runner uses, on a real SQLite study."""
    from study.night import plan
    from study.nights import cap_taken
    from study.storage import open_storage, open_study
    from study.workers import run_night
    wd = make_workdir(tmp_path / "wd")
    args = night_args(wd, "--max-trials", "2")
    afternoon, scheduled = plan(args, now=at("14:00")), plan(args, now=at("02:00", 5))
    assert afternoon.deadline == scheduled.deadline == at("05:00", 5)     # the same deadline ...
    assert afternoon.night.key != scheduled.night.key                     # ... not the same night
    # Nor is a run by hand in the evening with a --deadline of its own.
    evening = plan(night_args(wd, "--max-trials", "2", "--deadline", "22:00"), now=at("19:00", 5))
    assert not evening.night.scheduled
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(open_storage(url), STUDY, n_startup_trials=4)
    f = lambda t: t.suggest_float("x", 0, 1)  # noqa: E731
    assert len(run_night(study, url, afternoon.night.key, afternoon.max_trials, f)) == 2
    assert len(run_night(study, url, scheduled.night.key, scheduled.max_trials, f)) == 2
    assert cap_taken(study, scheduled) is not None and cap_taken(study, afternoon) is not None
    # A second run by hand is a run of its own again.
    later = plan(args, now=at("16:00"))
    assert cap_taken(study, later) is None
    assert len(run_night(study, url, later.night.key, later.max_trials, f)) == 2


def window_now(wd_overrides: dict | None = None) -> tuple[dict, str]:
    """Config overrides that put now inside the scheduled window, and its deadline."""
    now = datetime.now()
    start, deadline = (now - timedelta(minutes=10)).strftime("%H:%M"), (now + timedelta(hours=3)).strftime("%H:%M")
    return {'start = "02:00"': f'start = "{start}"', 'deadline = "05:00"': f'deadline = "{deadline}"',
            **(wd_overrides or {})}, deadline


def test_a_second_run_in_a_night_whose_trials_are_taken_says_so_and_exits_6(tmp_path):
    from study.night import plan
    from study.storage import open_storage, open_study
    from study.workers import run_night
    overrides, deadline = window_now()
    wd = make_workdir(tmp_path / "wd", overrides=overrides)
    p = plan(night_args(wd, "--demo", "--max-trials", "2", "--deadline", deadline))
    assert p.night.scheduled
    url = p.settings.storage_url()
    study = open_study(open_storage(url), p.study_name, n_startup_trials=4)
    assert len(run_night(study, url, p.night.key, 2, lambda t: t.suggest_float("x", 0, 1), worker="mini:41")) == 2
    out = subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(wd / "autoresearch.toml"), "--demo",
                          "--no-progress", "--max-trials", "2", "--deadline", deadline],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == EXIT_CAP_REACHED, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "has taken 2 of its 2 trials (mini:41 ran 2)" in lines[0]
    assert f"--deadline {deadline} --max-trials 4" in lines[0]
    assert len(study.get_trials()) == 2                      # nothing else was claimed


@pytest.mark.slow
def test_real_nights_a_run_by_hand_then_the_scheduled_run_trains_its_trials(tmp_path, demo_assets):
    """The same through NightRunner with real training (one trial each, for CI's time): a run
    by hand started before the window (time injected) trains its trial; the scheduled run
    after it still trains the night's."""
    from rich.console import Console

    from study.night import plan
    from study.runner import NightRunner
    overrides, deadline = window_now(FAST)
    wd = make_workdir(tmp_path / "wd", pretrain_s=float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20")),
                      overrides=overrides)
    link_demo_cache(wd, demo_assets)
    args = night_args(wd, "--demo", "--max-trials", "1", "--deadline", deadline)
    by_hand = plan(args, now=datetime.now() - timedelta(hours=1))
    scheduled = plan(args)
    assert (by_hand.night.scheduled, scheduled.night.scheduled) == (False, True)
    quiet = Console(file=open(os.devnull, "w"))
    assert NightRunner(by_hand, console=quiet).run() == 0
    assert NightRunner(scheduled, console=quiet).run() == 0
    import optuna
    trials = optuna.load_study(study_name=STUDY, storage=scheduled.settings.storage_url()).trials
    nights = [t.user_attrs["night"] for t in trials if t.state.name == "COMPLETE"]
    assert sorted(nights) == sorted([by_hand.night.key, scheduled.night.key])


def test_a_night_takes_the_openblas_route_before_its_preflight_imports_mlx(tmp_path):
    """Preflight reads through the eval harness, which imports mlx; the OpenBLAS route
    (common/fastblas.py) no longer takes after that import, and a whole night once ran on
    the reference BLAS. A night that stops before training (its trials taken) shows it."""
    from study.night import plan
    from study.storage import open_storage, open_study
    from study.workers import run_night
    overrides, deadline = window_now()
    wd = make_workdir(tmp_path / "wd", overrides=overrides)
    args = ["--config", str(wd / "autoresearch.toml"), "--demo", "--no-progress", "--max-trials", "1",
            "--deadline", deadline]
    p = plan(night_args(wd, *args[2:]))
    url = p.settings.storage_url()
    run_night(open_study(open_storage(url), p.study_name, n_startup_trials=4), url, p.night.key, 1,
              lambda t: t.suggest_float("x", 0, 1))
    probe = "import sys; from common import fastblas; print(fastblas.enable())"
    night = ("import sys; from study import nightly; rc = nightly.main(sys.argv[1:]); "
             "from common import fastblas; print(fastblas.enable()); sys.exit(rc)")
    alone = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", night, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == EXIT_CAP_REACHED, out.stderr
    assert out.stdout.split() == alone.stdout.split(), (out.stdout, alone.stdout)   # True on Linux x86_64


def test_two_demo_runs_in_one_minute_are_two_nights(tmp_path):
    """A demo without --deadline is a night of its own per run: a rerun right after a
    killed run (the same HH:MM) gets its own cap, not the killed run's taken one."""
    from study.night import plan
    wd = make_workdir(tmp_path / "wd")
    t0 = datetime(2026, 12, 5, 20, 36, 5)
    first = plan(night_args(wd, "--demo"), now=t0).night
    rerun = plan(night_args(wd, "--demo"), now=t0 + timedelta(seconds=40)).night
    assert first.key != rerun.key and not first.scheduled
    assert plan(night_args(wd, "--demo"), now=t0).night.key == first.key      # the same run, the same night
