"""SIGTERM (what launchd sends) while the night trains: the trial ends as FAIL with result
`failed:terminated`, in results.tsv and the vault before the night exits (not next night),
the training child is gone, council-mlx (a real `mlx_lm server`) is back up, the lock is
released, and the night exits 143 within 30 s."""
from __future__ import annotations

import signal
import time

import pytest
from optuna.trial import TrialState

from faultlib import (alive, free_port, health, load_study, managed_serving, planted_hits, read_results,
                      start_night, stop_server, wait_for_training, wait_until)
from study.guard import GuardError, NightLock

pytestmark = pytest.mark.slow


def test_sigterm_ends_the_trial_restarts_serving_and_releases_the_lock(fault_workdir, tmp_path):
    port = free_port()
    wd = fault_workdir(budget_s=60, overrides=managed_serving(port))
    night = start_night(wd, "--max-trials", "1", out=tmp_path / "night.out")
    try:
        children = wait_for_training(wd, night)
        assert not health(port), "council-mlx must be stopped while a trial trains"
        sent = time.monotonic()
        night.send_signal(signal.SIGTERM)
        rc = night.wait(30)
        took = time.monotonic() - sent
        up_after_exit = health(port)
    finally:
        if night.poll() is None:
            night.kill()
            night.wait()
        out = (tmp_path / "night.out").read_text(errors="replace")
        stop_server(wd)
    assert rc == 143, out[-3000:]
    assert took < 30
    assert "terminated: the running trial was ended" in out
    assert up_after_exit, "council-mlx was not restarted before the night exited"
    assert not any(alive(c) for c in children), "the training child outlived the terminated night"

    trial, *queued = load_study(wd).get_trials(deepcopy=False)
    assert trial.number == 0 and trial.state == TrialState.FAIL
    assert all(t.state == TrialState.WAITING for t in queued)   # the warm start, untouched
    assert trial.user_attrs["result"] == "failed:terminated"
    assert trial.user_attrs["fail_reason"] == "terminated"
    # Recorded on the way out, where the user reads it in the morning.
    rows = read_results(wd)
    assert list(rows["experiment_id"]) == [trial.user_attrs["experiment_id"]]
    assert list(rows["result"]) == ["failed:terminated"]
    [entry] = (wd / "demo-vault").rglob(f"autoresearch-{trial.user_attrs['experiment_id']}.md")
    assert "failed:terminated" in entry.read_text()
    # The lock is free: this process can take it at once.
    try:
        NightLock(wd / "cache" / "nightly.lock").acquire().release()
    except GuardError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"lock still held after SIGTERM: {exc}")
    assert wait_until(lambda: not health(port), 10)   # stop_server: nothing left running
    assert planted_hits(wd) == []
