"""One progress display: ours (steps, loss, elapsed vs budget); mlx-lm's TrainUI is muted.

mlx-lm's train() builds a TrainUI that prints a header, a bar and a line per report
(here: every step). There is no switch for it, so train() swaps in _SilentUI for the
duration of its call (see `muted_mlx_ui`).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .callbacks import TrainCallback, TrainContext


class RichProgress(TrainCallback):
    """A rich bar on stderr, and one printed line per validation (which logs keep)."""

    def __init__(self, total_iters: int, budget_s: float, console: Console | None = None):
        self._budget = budget_s
        self._progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[clock]}"),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("train", total=total_iters, loss="-", val="-", clock="")

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def on_train_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        self._progress.update(self._task, completed=step, loss=_fmt(loss), clock=self._clock(ctx))

    def on_val_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        self._progress.update(self._task, val=_fmt(loss), clock=self._clock(ctx))
        self._progress.console.print(f"  step {step:>5}  val {_fmt(loss)}  {self._clock(ctx)}")

    def _clock(self, ctx: TrainContext) -> str:
        return f"{ctx.elapsed_s:.0f}/{self._budget:.0f}s"


def _fmt(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else str(x)


class _SilentUI:
    """Stands in for mlx_lm.cli_ui.TrainUI with the same methods, printing nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, *args, **kwargs):
        pass

    def report_train(self, *args, **kwargs):
        pass

    def report_val(self, *args, **kwargs):
        pass

    def report_save(self, *args, **kwargs):
        pass

    @contextmanager
    def val_task(self, total: int):
        yield lambda: None


@contextmanager
def muted_mlx_ui() -> Iterator[None]:
    import mlx_lm.tuner.trainer as mlx_trainer

    saved = mlx_trainer.TrainUI
    mlx_trainer.TrainUI = _SilentUI
    try:
        yield
    finally:
        mlx_trainer.TrainUI = saved
