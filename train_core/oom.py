"""Out-of-memory: recognise MLX's allocation failures, so an OOM is a recorded result.

What MLX really does when memory runs out (mlx 0.32):
- Metal (macOS): RuntimeError "[metal::malloc] Attempting to allocate N bytes which is
  greater than the maximum allowed buffer size of M bytes." or "[metal::malloc] Unable
  to allocate N bytes."; a failed command buffer reports "Insufficient Memory
  (...kIOGPUCommandBufferCallbackErrorOutOfMemory)", sometimes from a thread that aborts
  the process.
- CUDA: "[cuda::malloc] ..." / "out of memory".
- C++ std::bad_alloc reaches Python as MemoryError.
- Linux CPU: the allocator does not check malloc's result: the process dies by SIGSEGV
  (or the kernel's OOM killer sends SIGKILL). No exception can be caught in process;
  `train_core.child.run_training` turns those deaths into OutOfMemory.
"""
from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .spec import TrainResult

ALLOCATION_MARKERS = (
    "[metal::malloc]",
    "[cuda::malloc]",
    "[malloc]",
    "[malloc_or_wait]",
    "unable to allocate",
    "greater than the maximum allowed buffer size",
    "insufficient memory",
    "erroroutofmemory",
    "out of memory",
    "bad_alloc",
)

# Signals a training process dies by when memory runs out (see the module docstring).
OOM_SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT)


class OutOfMemory(RuntimeError):
    """Training ran out of memory; `result` (stopped_by "oom") says how far it got."""

    def __init__(self, message: str, result: "TrainResult | None" = None):
        super().__init__(message)
        self.result = result


def is_allocation_error(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError) or isinstance(exc, OutOfMemory):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in ALLOCATION_MARKERS)


def died_of_oom(returncode: int, *, via_shell: bool = False) -> bool:
    """A child's return code that reads as OOM: Popen gives -N for death by signal N;
    a shell (and so `ssh node python -m train_core ...`) reports 128 + N instead."""
    signals = {int(s) for s in OOM_SIGNALS}
    if via_shell:
        return returncode - 128 in signals
    return returncode < 0 and -returncode in signals


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
