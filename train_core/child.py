"""Every training run in a child process, local or over ssh, watched through its events.

`run_training(spec, callbacks)` starts `python -m train_core --events` (or the argv it is
given, e.g. an ssh command), reads its event stream, and calls the callbacks here, in
the parent, as train() would in process. A callback's StopTraining becomes a `stop`
command on the child's stdin; the child stops at its next step and still writes the
adapter.

Why a child: on Linux CPU, MLX 0.32 does not check malloc, so running out of memory is
a SIGSEGV; the kernel's OOM killer sends SIGKILL; on Metal a failed command buffer can
abort. None of those can be caught by the process that trains. Here they end the
child, and the parent turns the death into OutOfMemory with how far the run got.

Parent-side callbacks see a TrainContext whose `model` and `tokenizer` are None: what
needs the model runs in the child (TrainSpec.checks: the checkpoint checks), and its
scores come back as `check` events, to the callbacks' on_check.
"""
from __future__ import annotations

import collections
import errno
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Sequence

from common.errors import ConfigError

from .adapter import remove_stale_temp_dirs
from .callbacks import StopTraining, TrainCallback, TrainContext, run_hooks
from .events import decode, decode_loss, stop_command
from .oom import OutOfMemory, died_of_oom
from .spec import TrainResult, TrainSpec, finite_or_none

_ROOT = Path(__file__).resolve().parent.parent  # holds train_core/ and common/
STDERR_TAIL_LINES = 40
TRAIN_LOSS_WINDOW = 10


class ChildFailed(RuntimeError):
    """The training process failed for a reason that is neither bad input nor memory."""


class RemoteLost(RuntimeError):
    """The connection to the training node went away mid-run (ssh/rsync exit 255 & co.)."""


class DiskFull(OSError):
    """The child could not write (the adapter, mostly): no space left on the device."""


# How a child's OSError(ENOSPC/EDQUOT) reads in its one-line error (train_core.trainer
# turns MLX's bare "[write] Unable to write" on a full disk into one).
_NO_SPACE = ("[Errno 28]", "No space left on device", "[Errno 122]", "Disk quota exceeded")


def disk_full(message: str) -> bool:
    return any(s in message for s in _NO_SPACE)


class TrainingTimeout(subprocess.TimeoutExpired):
    """The run outlived its hard limit; its process group was killed."""

    def __init__(self, cmd: Sequence[str], timeout: float, result: TrainResult | None):
        super().__init__(list(cmd), timeout)
        self.result = result

    def __str__(self) -> str:
        return (f"training ran past its hard limit of {self.timeout:.0f} s "
                f"(budget + margin): the training process group was killed")


def hard_timeout_s(budget_s: float) -> float:
    """The local limit over a budget the child enforces itself: loading the model and the
    save come on top of the budget, and a slow step can overshoot the final validation's
    prediction."""
    return budget_s * 1.25 + 300.0


def local_argv(spec_path: str | os.PathLike, python: str = sys.executable) -> list[str]:
    return [python, "-m", "train_core", "--spec", os.fspath(spec_path), "--events", "--quiet"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def run_training(
    spec: TrainSpec,
    callbacks: Sequence[TrainCallback] = (),
    *,
    argv: Sequence[str] | None = None,
    timeout_s: float | None = None,
    progress: bool = True,
    env: dict[str, str] | None = None,
    rlimit_as: int | None = None,
    lost_exit_codes: Sequence[int] = (),
) -> TrainResult:
    """Trains spec in a child process; returns its TrainResult.

    argv: the command that runs `python -m train_core --spec <its spec> --events`; by
      default the local interpreter on a temp copy of spec. A remote argv (ssh) must
      already name the spec on the node; `spec` is then only what partial results and
      the hard timeout are built from.
    timeout_s: hard local limit (default hard_timeout_s(spec.budget_s)); past it the
      child's process group is killed and TrainingTimeout raised.
    progress: a progress bar here, on stderr, fed by the events (the child is quiet).
    env: extra environment for the child. rlimit_as: the child's address-space cap
      (bytes, Linux; tests use it to make a real allocation fail).
    lost_exit_codes: exit codes that mean the transport died (ssh: 255) -> RemoteLost.

    Raises ConfigError (bad input), OutOfMemory (reported by the child or death by
    SIGSEGV/SIGKILL/SIGBUS/SIGABRT; its .result says how far the run got), RemoteLost,
    TrainingTimeout, DiskFull (an OSError with errno ENOSPC), ChildFailed;
    KeyboardInterrupt kills the child and propagates.
    """
    limit = hard_timeout_s(spec.budget_s) if timeout_s is None else timeout_s
    with tempfile.TemporaryDirectory(prefix="train_core-") as work:
        if argv is None:
            spec_path = Path(work) / "spec.json"
            spec.to_json(spec_path)
            argv = local_argv(spec_path)
        watcher = _Watcher(spec, list(callbacks), list(argv), limit, progress)
        rc = watcher.run(child_env(env), _rlimit_as(rlimit_as))
    return watcher.verdict(rc, tuple(lost_exit_codes))


class _Watcher:
    """One child: its process, its event stream, and what the callbacks have seen."""

    def __init__(self, spec: TrainSpec, callbacks: list[TrainCallback], argv: list[str],
                 timeout_s: float, progress: bool):
        self.spec, self.callbacks, self.argv = spec, callbacks, argv
        self.timeout_s, self.progress = timeout_s, progress
        self.ctx = TrainContext(spec=spec, model=None, tokenizer=None, num_layers_effective=0,
                                trainable_params=0)
        self.result: TrainResult | None = None
        self.error: dict[str, Any] | None = None
        self.timed_out = False
        self.stop_sent = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.proc: subprocess.Popen | None = None
        self.started = time.monotonic()
        self.display = None

    # -- the process ------------------------------------------------------------------
    def run(self, env: dict[str, str], preexec) -> int:
        # A session of its own: the whole group (child and anything it started) can be
        # killed at once, and the terminal's Ctrl-C reaches only us.
        self.proc = proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True, preexec_fn=preexec)
        pump = threading.Thread(target=self._pump_stderr, args=(proc.stderr,), daemon=True)
        pump.start()
        timer = threading.Timer(self.timeout_s, self._on_timeout)
        timer.daemon = True
        timer.start()
        try:
            self._open_display()
            try:
                for raw in proc.stdout:
                    event = decode(raw)
                    if event is None:
                        self._note(raw.decode("utf-8", "replace").rstrip())
                    else:
                        self._dispatch(event)
            finally:
                self._close_display()
            rc = proc.wait()
        except BaseException:
            # KeyboardInterrupt (SIGTERM in the night), or a callback's own error.
            self._kill()
            raise
        finally:
            timer.cancel()
            pump.join(timeout=5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                _close_quietly(stream)
        return rc

    def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _on_timeout(self) -> None:
        self.timed_out = True
        self._kill()

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        """The child's stderr, line by line, to ours; only a bounded tail is kept."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._note(line)
            try:
                print(line, file=sys.stderr, flush=True)
            except (OSError, ValueError):
                pass

    def _note(self, line: str) -> None:
        if line.strip():
            self.stderr_tail.append(line)

    def _send_stop(self, reason: str) -> None:
        if self.stop_sent or self.proc is None:
            return
        self.stop_sent = True
        try:
            self.proc.stdin.write(stop_command(reason))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the child is gone already; its exit tells the rest

    # -- the events -------------------------------------------------------------------
    def _dispatch(self, event: dict[str, Any]) -> None:
        kind, ctx = event["event"], self.ctx
        if kind == "start":
            ctx.num_layers_effective = int(event.get("num_layers_effective", 0))
            ctx.trainable_params = int(event.get("trainable_params", 0))
            ctx.started_at = time.monotonic()
            self._hooks("on_start")
        elif kind == "train_loss":
            step, loss = int(event["step"]), decode_loss(event.get("loss"))
            ctx.iters_done = step
            ctx.train_losses.append(loss)
            self._hooks("on_train_loss", step, loss)
        elif kind == "val_loss":
            step, loss = int(event["step"]), decode_loss(event.get("loss"))
            ctx.val_history.append((step, loss))
            self._hooks("on_val_loss", step, loss)
        elif kind == "check":
            result = event.get("result") or {}
            ctx.checks.append(result)
            self._hooks("on_check", int(event["step"]), result)
        elif kind == "end":
            self.result = TrainResult.from_dict(event["result"])
            for cb in self._all_callbacks():
                try:
                    cb.on_end(self.result)
                except StopTraining:
                    pass  # nothing left to stop
        elif kind == "error":
            self.error = event

    def _hooks(self, hook: str, *args) -> None:
        # As in process: once a stop is asked for, no more step hooks run.
        if self.ctx.stop is not None:
            return
        run_hooks(self._all_callbacks(), self.ctx, hook, *args)
        if self.ctx.stop is not None:
            self._send_stop(self.ctx.stop.reason)

    def _all_callbacks(self) -> list[TrainCallback]:
        return ([self.display] if self.display else []) + self.callbacks

    def _open_display(self) -> None:
        if self.progress:
            from .progress import RichProgress
            self.display = RichProgress(self.spec.iters, self.spec.budget_s)
            self.display.__enter__()

    def _close_display(self) -> None:
        if self.display is not None:
            self.display.__exit__(None, None, None)

    # -- the outcome ------------------------------------------------------------------
    def verdict(self, rc: int, lost_exit_codes: tuple[int, ...]) -> TrainResult:
        tail = self.tail()
        if self.result is not None:  # the end event came: whatever ended the process after it
            return self.result
        if self.timed_out:
            raise TrainingTimeout(self.argv, self.timeout_s, self.partial_result("timeout"))
        if self.error is not None:
            return self._raise_reported(self.error)
        if died_of_oom(rc) or died_of_oom(rc, via_shell=True):
            remove_stale_temp_dirs(Path(self.spec.adapter_dir))
            raise OutOfMemory(
                f"training process died by {_signal_name(rc)}, read as out of memory (MLX on "
                f"Linux CPU segfaults when malloc fails; the OOM killer sends SIGKILL)"
                + (f": {tail}" if tail else ""), self.partial_result())
        if rc in lost_exit_codes:
            raise RemoteLost(f"connection to the training node lost (exit {rc})" + (f": {tail}" if tail else ""))
        message = f"{' '.join(self.argv[:3])} ... exited with {rc} without a result" + (f": {tail}" if tail else "")
        if disk_full(tail):
            raise DiskFull(errno.ENOSPC, f"no space left on device: {message}")
        raise ChildFailed(message)

    def _raise_reported(self, error: dict[str, Any]) -> TrainResult:
        kind, message = error.get("kind"), str(error.get("message", ""))
        if kind == "config":
            raise ConfigError(None, None, message)
        if kind == "oom":
            reported = error.get("result")
            raise OutOfMemory(message, TrainResult.from_dict(reported) if reported else self.partial_result())
        if disk_full(message):
            raise DiskFull(errno.ENOSPC, f"no space left on device: {message}")
        raise ChildFailed(message)

    def tail(self, lines: int = 3) -> str:
        return " | ".join(list(self.stderr_tail)[-lines:])

    def partial_result(self, stopped_by: str = "oom") -> TrainResult:
        """How far a run got before its process died: no adapter, losses as reported."""
        ctx, spec = self.ctx, self.spec
        window = ctx.train_losses[-TRAIN_LOSS_WINDOW:]
        return TrainResult(
            adapter_dir=spec.adapter_dir,
            train_loss=finite_or_none(sum(window) / len(window)) if window else None,
            val_loss=None, elapsed_s=round(time.monotonic() - self.started, 3),
            iters_done=ctx.iters_done, updates_done=ctx.updates_done, stopped_by=stopped_by,
            num_layers_requested=spec.num_layers, num_layers_effective=ctx.num_layers_effective,
            trainable_params=ctx.trainable_params, val_history=list(ctx.val_history),
        )


def _signal_name(rc: int) -> str:
    number = -rc if rc < 0 else rc - 128
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _rlimit_as(limit: int | None):
    if limit is None:
        return None

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))

    return apply


def _close_quietly(stream) -> None:
    if stream is None:
        return
    try:
        stream.close()
    except (OSError, ValueError):
        pass
