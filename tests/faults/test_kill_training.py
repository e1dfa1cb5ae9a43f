"""kill -9 of the nightly while it trains: the training child goes too, the dead night's lock
does not block the next one, which marks the trial FAIL (killed), runs the same params
again, and results.tsv shows both rows."""
from __future__ import annotations

import json
import os
import signal

import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from faultlib import (alive, load_study, no_warm_start, planted_hits, read_results, run_night, set_budget,
                      start_night, wait_for_training, wait_until)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def test_kill_9_during_training_is_recovered_next_night(fault_workdir, tmp_path):
    # A long budget so the kill lands mid-training whatever the load; the rerun is short.
    wd = fault_workdir(budget_s=60)
    no_warm_start(wd)
    night = start_night(wd, "--max-trials", "1", out=tmp_path / "night1.out")
    try:
        children = wait_for_training(wd, night)
        os.kill(night.pid, signal.SIGKILL)
        night.wait(10)
    finally:
        if night.poll() is None:
            night.kill()
            night.wait()
    # The child reads its parent's pipe: EOF means stop at the next step, and save nothing.
    assert wait_until(lambda: not any(alive(c) for c in children), 60, 0.2), \
        f"train_core {children} outlived its killed parent"
    lock = wd / "cache" / "nightly.lock"
    assert lock.read_text().strip() == str(night.pid)      # the dead night still "holds" it on paper
    study = load_study(wd)
    (killed,) = study.get_trials(deepcopy=False)
    assert killed.state == TrialState.RUNNING                 # nobody has looked yet

    set_budget(wd, 4)
    out = run_night(wd, "--max-trials", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "recovered trials [0]" in out.stdout

    trials = load_study(wd).get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1]
    first, rerun = trials
    assert first.state == TrialState.FAIL and first.user_attrs["result"] == "failed:killed"
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(rerun) == 0
    assert rerun.params == first.params
    assert rerun.state == TrialState.COMPLETE and not rerun.user_attrs["result"].startswith("failed")
    assert not load_study(wd).get_trials(states=(TrialState.RUNNING, TrialState.WAITING))

    df = read_results(wd)
    assert list(df["result"])[0] == "failed:killed" and len(df) == 2
    assert json.loads(df["config"][0]) == json.loads(df["config"][1]) == pytest.approx(first.params)
    assert df["experiment_id"].is_unique
    # The next night took the lock over and let it go.
    assert lock.read_text().strip() == ""
    assert not list((wd / "adapters-experimental").glob(".*tmp-*")), "a temp adapter folder was left"
    assert not (wd / "adapters-experimental" / first.user_attrs["experiment_id"]).exists(), \
        "the orphaned child saved an adapter nobody will evaluate"
    assert planted_hits(wd) == []
