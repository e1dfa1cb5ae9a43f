"""Training in a child process, so an OOM that kills the process is still a result.

On Linux CPU, MLX 0.32 does not check malloc: running out of memory is a SIGSEGV, and
the kernel's OOM killer sends SIGKILL; on Metal an out-of-memory command buffer can
abort the process. None of those can be caught in the process that trains. Here the
child is `python -m train_core`; its death by one of those signals becomes OutOfMemory
with a TrainResult whose stopped_by is "oom", like an in-process allocation error.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.errors import ConfigError

from .adapter import remove_stale_temp_dirs
from .oom import OutOfMemory, died_of_oom, signal_name
from .spec import TrainResult, TrainSpec

_ROOT = Path(__file__).resolve().parent.parent  # holds train_core/ and common/
EXIT_CONFIG, EXIT_OOM = 2, 3


def train_in_subprocess(
    spec: TrainSpec,
    *,
    timeout_s: float | None = None,
    address_space_limit: int | None = None,
    progress: bool = False,
    python: str = sys.executable,
) -> TrainResult:
    """Runs `python -m train_core` on spec; returns its TrainResult.

    address_space_limit (bytes) caps the child's virtual memory (RLIMIT_AS), e.g. to
    keep a trial from taking the whole machine; Linux only.
    Raises ConfigError (exit 2), OutOfMemory (exit 3 or death by an OOM signal),
    subprocess.TimeoutExpired, or RuntimeError for any other failure.
    """
    with tempfile.TemporaryDirectory(prefix="train_core-") as work:
        work_dir = Path(work)
        spec_path, result_path, log_path = work_dir / "spec.json", work_dir / "result.json", work_dir / "stderr.log"
        spec.to_json(spec_path)
        cmd = [python, "-m", "train_core", "--spec", str(spec_path), "--result", str(result_path)]
        if not progress:
            cmd.append("--quiet")
        t0 = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.run(cmd, env=child_env(), stdout=subprocess.DEVNULL,
                                  stderr=None if progress else log, timeout=timeout_s,
                                  preexec_fn=_rlimit_as(address_space_limit))
        wall = time.monotonic() - t0
        tail = _tail(log_path)
        result = _read_result(result_path)
        return interpret_exit(proc.returncode, result, tail, spec, wall)


def interpret_exit(rc: int, result: TrainResult | None, tail: str, spec: TrainSpec, wall_s: float) -> TrainResult:
    """The child's exit -> its result, or the exception train() would have raised."""
    if rc == 0 and result is not None:
        return result
    if rc == EXIT_CONFIG:
        raise ConfigError(None, None, tail.removeprefix("train_core: ") or "bad input (exit 2)")
    if rc == EXIT_OOM:
        raise OutOfMemory(tail or "out of memory (exit 3)", result or killed_result(spec, wall_s))
    if died_of_oom(rc):
        remove_stale_temp_dirs(Path(spec.adapter_dir))
        raise OutOfMemory(
            f"training process died by {signal_name(rc)}, read as out of memory "
            f"(MLX on Linux CPU segfaults when malloc fails; the OOM killer sends SIGKILL)",
            killed_result(spec, wall_s),
        )
    raise RuntimeError(f"python -m train_core exited with {rc}: {tail or '(no output)'}")


def killed_result(spec: TrainSpec, wall_s: float) -> TrainResult:
    """All that is known of a run whose process died: no adapter, no losses."""
    return TrainResult(
        adapter_dir=spec.adapter_dir, train_loss=None, val_loss=None, elapsed_s=round(wall_s, 3),
        iters_done=0, updates_done=0, stopped_by="oom", num_layers_requested=spec.num_layers,
        num_layers_effective=0, trainable_params=0, val_history=[], adapter_sha256="",
        base_model_sha256="",
    )


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _rlimit_as(limit: int | None):
    if limit is None:
        return None

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))

    return apply


def _read_result(path: Path) -> TrainResult | None:
    try:
        return TrainResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])
