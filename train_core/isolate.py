"""train_in_subprocess: the first child-process entry point, kept for its callers.

It is now `train_core.child.run_training` without callbacks (see that module for why
training runs in a child, and how a death by signal becomes OutOfMemory).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .child import child_env, local_argv, run_training  # noqa: F401  (re-exported)
from .spec import TrainResult, TrainSpec


def train_in_subprocess(
    spec: TrainSpec,
    *,
    timeout_s: float | None = None,
    address_space_limit: int | None = None,
    progress: bool = False,
    python: str = sys.executable,
) -> TrainResult:
    """Runs `python -m train_core --events` on spec; returns its TrainResult.

    address_space_limit (bytes) caps the child's virtual memory (RLIMIT_AS), e.g. to
    keep a trial from taking the whole machine; Linux only.
    Raises ConfigError, OutOfMemory, TrainingTimeout (a subprocess.TimeoutExpired),
    ChildFailed for any other failure.
    """
    if python == sys.executable:
        return run_training(spec, timeout_s=timeout_s, progress=progress, rlimit_as=address_space_limit)
    with tempfile.TemporaryDirectory(prefix="train_core-") as work:
        spec_path = Path(work) / "spec.json"
        spec.to_json(spec_path)
        return run_training(spec, argv=local_argv(spec_path, python), timeout_s=timeout_s,
                            progress=progress, rlimit_as=address_space_limit)
