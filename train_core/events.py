"""The event protocol of `python -m train_core --spec spec.json --events`.

Child -> parent: one JSON object per line on stdout, flushed as it is written:
  {"event": "start", "iters": N, "budget_s": B, "num_layers_effective": L, "trainable_params": P}
  {"event": "train_loss", "step": s, "loss": x, "elapsed_s": t}
  {"event": "val_loss", "step": s, "loss": x, "elapsed_s": t}
  {"event": "check", "step": s, "result": {train_core.checks result, or {"step", "error"}}}
  {"event": "end", "result": {TrainResult}}
  {"event": "error", "kind": "oom" | "config" | "error", "message": "...", "result": {TrainResult} | null}
A non-finite loss travels as the string "nan", "inf" or "-inf" (JSON has no NaN).

Parent -> child: one command per line on stdin:
  stop <reason>   stop at the next step boundary, exactly like a hook raising
                  StopTraining(reason): the adapter is still written, stopped_by is
                  "callback:<reason>".
End of stdin means the parent (or the ssh connection to it) is gone: the run stops at
the next step with reason "parent_gone", so a lost node does not train on for its whole
budget, and writes no adapter, since nobody is left to evaluate it.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
from typing import IO, Any

from .callbacks import StopTraining, TrainCallback, TrainContext
from .spec import TrainResult

EVENTS = ("start", "train_loss", "val_loss", "check", "end", "error")
ERROR_KINDS = ("oom", "config", "error")
PARENT_GONE = "parent_gone"


def encode_loss(x: float) -> float | str:
    return float(x) if math.isfinite(x) else str(float(x))  # "nan", "inf", "-inf"


def decode_loss(x: float | str | None) -> float:
    return math.nan if x is None else float(x)


def encode(event: str, **fields: Any) -> str:
    return json.dumps({"event": event, **fields}, allow_nan=False, separators=(",", ":"))


def decode(line: bytes | str) -> dict[str, Any] | None:
    """An event dict, or None for a line that is not one (stray output is not fatal)."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(obj, dict) and obj.get("event") in EVENTS:
        return obj
    return None


def stop_command(reason: str) -> bytes:
    # One line whatever the reason holds: a newline in it would read as a second command.
    return ("stop " + (" ".join(str(reason).split()) or "stopped") + "\n").encode()


def parse_command(line: str) -> str | None:
    """The stop reason in a command line, or None for anything else."""
    words = line.strip().split(maxsplit=1)
    if not words or words[0] != "stop":
        return None
    return words[1] if len(words) > 1 else "stopped"


class EventWriter:
    """Writes events to the stream the parent reads; a vanished parent is not an error."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.broken = False
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = encode(event, **fields) + "\n"
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True

    def error(self, kind: str, message: str, result: TrainResult | None = None) -> None:
        self.write("error", kind=kind, message=message, result=result.to_dict() if result else None)

    def end(self, result: TrainResult) -> None:
        self.write("end", result=result.to_dict())


class StdinCommands:
    """Reads commands on a daemon thread; the first stop reason wins."""

    def __init__(self, stream: IO[str]):
        self.reason: str | None = None
        self._thread = threading.Thread(target=self._read, args=(stream,), name="train_core-stdin",
                                        daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                reason = parse_command(line)
                if reason is not None and self.reason is None:
                    self.reason = reason
        except (OSError, ValueError):
            pass
        if self.reason is None:
            self.reason = PARENT_GONE


class EventBridge(TrainCallback):
    """First of the user hooks in the child: reports every event, then obeys a stop."""

    def __init__(self, writer: EventWriter, commands: StdinCommands | None):
        self.writer, self.commands = writer, commands

    def on_start(self, ctx: TrainContext) -> None:
        self.writer.write("start", iters=ctx.spec.iters, budget_s=ctx.spec.budget_s,
                          num_layers_effective=ctx.num_layers_effective,
                          trainable_params=ctx.trainable_params)
        self._obey()

    def on_train_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        self.writer.write("train_loss", step=step, loss=encode_loss(loss), elapsed_s=round(ctx.elapsed_s, 3))
        self._obey()

    def on_val_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        self.writer.write("val_loss", step=step, loss=encode_loss(loss), elapsed_s=round(ctx.elapsed_s, 3))
        self._obey()

    def on_check(self, step: int, result: dict[str, Any], ctx: TrainContext) -> None:
        self.writer.write("check", step=step, result=result)
        self._obey()

    def _obey(self) -> None:
        if self.writer.broken:
            raise StopTraining(PARENT_GONE)
        if self.commands is not None and self.commands.reason is not None:
            raise StopTraining(self.commands.reason)


def claim_stdout() -> IO[str]:
    """The real stdout, for events only; fd 1 and sys.stdout then point at stderr.

    mlx-lm and MLX may print to stdout (Python prints, or C++ writing to fd 1); any such
    line inside the event stream would be noise at best. Rerouting fd 1 keeps the stream
    clean whatever a library prints.
    """
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8")
