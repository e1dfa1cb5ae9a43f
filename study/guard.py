"""The night's guard: one nightly per machine, and none while another training job runs."""
from __future__ import annotations

import fcntl
import os
import re
import subprocess
from pathlib import Path

# Command lines of training jobs that hold the GPU (ours in another process, or the
# user's own mlx-lm runs). Matched against `ps` output, which exists on macOS and Linux.
TRAINING_PATTERNS = (r"\bmlx_lm[. ]lora\b", r"-m\s+train_core\b", r"\bmlx_lm\.lora\b")


class GuardError(RuntimeError):
    """The night must not start; the message says why."""


class NightAborted(RuntimeError):
    """The night stopped itself before training (e.g. the eval canary failed): exit 1."""


class NightLock:
    """An flock on a file: the kernel drops it when the holder dies, so a kill -9'd
    nightly never blocks the next one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> "NightLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise GuardError(f"another study.nightly is running on this machine (pid {holder}, lock {self.path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "NightLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def running_training_jobs(patterns=TRAINING_PATTERNS, exclude_pids: set[int] | None = None) -> list[str]:
    """Other processes whose command line looks like a training job ("pid command")."""
    exclude = {os.getpid(), os.getppid()} | (exclude_pids or set())
    # -ww: without it ps cuts lines at $COLUMNS (80 under CI), dropping "-m train_core" from long paths.
    out = subprocess.run(["ps", "-axww", "-o", "pid=,command="], capture_output=True, text=True, check=False).stdout
    found = []
    rx = [re.compile(p) for p in patterns]
    for line in out.splitlines():
        pid_s, _, cmd = line.strip().partition(" ")
        if not pid_s.isdigit() or int(pid_s) in exclude:
            continue
        if any(r.search(cmd) for r in rx) and "study.nightly" not in cmd and " ps " not in cmd:
            found.append(f"{pid_s} {cmd.strip()[:120]}")
    return found


def check_no_training_job(patterns=TRAINING_PATTERNS) -> None:
    jobs = running_training_jobs(patterns)
    if jobs:
        raise GuardError("another training job is running, not starting: " + "; ".join(jobs))
