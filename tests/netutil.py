"""Loopback helpers for tests that start servers: every server a test starts listens on
127.0.0.1, on a port the OS hands out."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it; the test's server binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int, path: str = "/health") -> bool:
    """True when http://127.0.0.1:<port><path> answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlx_server(model_dir, log: Path, timeout_s: float = 90, adapter: Path | None = None) -> Iterator[str]:
    """A real `mlx_lm server` for model_dir (+ adapter) on a free loopback port; yields its /v1
    URL and stops it by its PID. HF_HUB_CACHE must name an existing folder (stays empty: no downloads)."""
    port = free_port()
    hf_cache = log.parent / "hf-hub"
    hf_cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_CACHE=str(hf_cache), HF_HUB_OFFLINE="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir),
                                 "--host", "127.0.0.1", "--port", str(port)]
                                + (["--adapter-path", str(adapter)] if adapter else []),
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while not health(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlx_lm server did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
