"""Loopback helpers for tests that start servers: every server a test starts listens on
127.0.0.1, on a port the OS hands out."""
from __future__ import annotations

import socket
import urllib.request


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
