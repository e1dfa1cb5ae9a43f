"""The guard: one nightly per machine; a dead holder never blocks; other training jobs refuse the night."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from study.guard import GuardError, NightLock, check_no_training_job, running_training_jobs

HOLD = "import sys,time; from study.guard import NightLock; NightLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"


def _holder(lock):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_lock_refused_with_holder_pid(tmp_path):
    lock = tmp_path / "nightly.lock"
    p = _holder(lock)
    try:
        with pytest.raises(GuardError, match=f"pid {p.pid}"):
            NightLock(lock).acquire()
    finally:
        p.kill()
        p.wait()


def test_lock_of_killed_process_does_not_block(tmp_path):
    lock = tmp_path / "nightly.lock"
    p = _holder(lock)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with NightLock(lock):
        assert lock.read_text().strip() == str(os.getpid())


def test_other_training_job_refuses_the_night(monkeypatch):
    # A narrow terminal must not hide the job: ps cuts command lines at $COLUMNS unless told not to.
    monkeypatch.setenv("COLUMNS", "20")
    # A process whose command line looks like our remote trainer.
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "train_core", "--spec", "x.json"])
    try:
        deadline = time.time() + 5
        while time.time() < deadline and not any(str(p.pid) == j.split()[0] for j in running_training_jobs()):
            time.sleep(0.1)
        with pytest.raises(GuardError, match="another training job is running"):
            check_no_training_job()
    finally:
        p.kill()
        p.wait()
    assert not any(str(p.pid) == j.split()[0] for j in running_training_jobs())
