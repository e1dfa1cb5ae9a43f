"""A council-mlx that ignores adapters/current, for the `command` serving backend in tests:
what an mlx-lm release whose server silently ignored --adapter-path looked like.

    python council_mlx_cmd.py start MODEL PORT PIDFILE   # becomes `mlx_lm server` on the base model
    python council_mlx_cmd.py stop PIDFILE               # SIGTERM to that PID, waits until it is gone
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def start(model: str, port: str, pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.execv(sys.executable, [sys.executable, "-m", "mlx_lm", "server", "--model", model,
                              "--host", "127.0.0.1", "--port", port])


def stop(pid_file: str) -> None:
    try:
        pid = int(Path(pid_file).read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.05)
    except ProcessLookupError:
        pass
    Path(pid_file).unlink(missing_ok=True)


if __name__ == "__main__":
    {"start": start, "stop": stop}[sys.argv[1]](*sys.argv[2:])
