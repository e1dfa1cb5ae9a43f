"""Process helpers shared by the promoter, the study's crash recovery and train_core."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while a process with this PID exists (ours or not): signal 0 probes, sends nothing."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it just is not ours
        return True
    return True
