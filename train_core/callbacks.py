"""Training callbacks: the only way to watch or stop a run from outside.

A hook raises StopTraining(reason) to end training early. train() turns that into a
request that its batch iterator honours before the next step, so mlx-lm's loop ends
normally and the adapter is still written (raising through mlx-lm would skip its save).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .spec import TrainResult, TrainSpec


class StopTraining(Exception):
    """Raised by a hook to end training; the adapter is still saved.

    `stopped_by` is what TrainResult records: "callback:<reason>" for user callbacks;
    the built-in guards pass their own ("budget", "nan", "diverged").
    """

    def __init__(self, reason: str, *, stopped_by: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.stopped_by = stopped_by or f"callback:{reason}"


@dataclass
class TrainContext:
    """Live state of a run, handed to every hook."""

    spec: "TrainSpec"
    model: Any
    tokenizer: Any
    num_layers_effective: int
    trainable_params: int
    started_at: float = field(default_factory=time.monotonic)
    iters_done: int = 0
    train_losses: list[float] = field(default_factory=list)
    val_history: list[tuple[int, float]] = field(default_factory=list)
    stop: StopTraining | None = None
    # Durations of the latest step and validation: the budget guard predicts with them.
    last_step_s: float = 0.0
    last_val_s: float = 0.0
    # The final validation scores the whole split, this many times the in-loop subset (padded tokens):
    # the guard reserves its predicted time so the run, not just the loop, keeps the budget.
    final_val_ratio: float = 0.0
    # Checkpoint checks (train_core.checks): their results, the latest one's duration, and
    # whether the validation at a step will be checked (the budget guard reserves it).
    checks: list[dict[str, Any]] = field(default_factory=list)
    last_check_s: float = 0.0
    check_due: Any = lambda step: False

    @property
    def final_val_s(self) -> float:
        return self.last_val_s * self.final_val_ratio

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def updates_done(self) -> int:
        return self.iters_done // self.spec.grad_accum

    @property
    def best_val_loss(self) -> float | None:
        finite = [v for _, v in self.val_history if math.isfinite(v)]
        return min(finite) if finite else None

    def request_stop(self, exc: StopTraining) -> None:
        """The first reason wins: later hooks cannot rename why a run stopped."""
        if self.stop is None:
            self.stop = exc


class TrainCallback:
    """Base class; override any hook. Hooks run in the training process, in order."""

    def on_start(self, ctx: TrainContext) -> None:
        pass

    def on_train_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        pass

    def on_val_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        """Runs with the model in eval mode: ctx.model can be scored here."""

    def on_check(self, step: int, result: dict[str, Any], ctx: TrainContext) -> None:
        """A checkpoint check's scores (train_core.checks), right after on_val_loss."""

    def on_end(self, result: "TrainResult") -> None:
        pass


class NanGuard(TrainCallback):
    """Stops at the first non-finite train or validation loss."""

    def on_train_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        if not math.isfinite(loss):
            raise StopTraining(f"train loss {loss} at step {step}", stopped_by="nan")

    def on_val_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        if not math.isfinite(loss):
            raise StopTraining(f"val loss {loss} at step {step}", stopped_by="nan")


class DivergenceGuard(TrainCallback):
    """Stops when validation loss exceeds factor × the best validation loss so far."""

    def __init__(self, factor: float):
        self.factor = factor

    def on_val_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        best = ctx.best_val_loss
        if best is not None and is_diverged(loss, best, self.factor):
            raise StopTraining(
                f"val loss {loss:.4g} > {self.factor:g} x best {best:.4g} at step {step}",
                stopped_by="diverged",
            )


class BudgetGuard(TrainCallback):
    """Stops before the step (plus validation, if one is due) that would leave too little
    of the budget for the final validation over the whole split.

    It predicts from the latest step's and validation's durations, so a run usually ends
    just under budget_s; a step slower than the one before it can still overshoot by that
    step. Only the adapter save (a fraction of a second) comes on top.
    """

    def __init__(self, budget_s: float):
        self.budget_s = budget_s

    def on_train_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        val_now = step % ctx.spec.val_every == 0
        self._check(step, ctx, (self._val_s(step, ctx) if val_now else 0.0) + self._next_step_s(step, ctx))

    def on_val_loss(self, step: int, loss: float, ctx: TrainContext) -> None:
        self._check(step, ctx, self._next_step_s(step, ctx))

    @staticmethod
    def _next_step_s(step: int, ctx: TrainContext) -> float:
        """The next step and its validation, if one is due; nothing after the last step."""
        if step >= ctx.spec.iters:
            return 0.0
        val_next = (step + 1) % ctx.spec.val_every == 0
        return ctx.last_step_s + (BudgetGuard._val_s(step + 1, ctx) if val_next else 0.0)

    @staticmethod
    def _val_s(step: int, ctx: TrainContext) -> float:
        """A validation, and its checkpoint check when one is due there."""
        return ctx.last_val_s + (ctx.last_check_s if ctx.check_due(step) else 0.0)

    def _check(self, step: int, ctx: TrainContext, next_work_s: float) -> None:
        # No next work (the last step): stopping would save nothing, the final validation runs anyway.
        if next_work_s > 0 and over_budget(ctx.elapsed_s, next_work_s + ctx.final_val_s, self.budget_s):
            raise StopTraining(
                f"budget {self.budget_s:g}s spent ({ctx.elapsed_s:.1f}s at step {step})",
                stopped_by="budget",
            )


def is_diverged(loss: float, best: float, factor: float) -> bool:
    return math.isfinite(loss) and loss > factor * best


def over_budget(elapsed_s: float, next_work_s: float, budget_s: float) -> bool:
    """True when the next unit of work (a step, maybe a validation) would end past the budget."""
    return elapsed_s + next_work_s > budget_s


def run_hooks(callbacks, ctx: TrainContext, hook: str, *args) -> None:
    """Calls `hook` on each callback until one asks to stop; other exceptions propagate."""
    for cb in callbacks:
        try:
            getattr(cb, hook)(*args, ctx)
        except StopTraining as exc:
            ctx.request_stop(exc)
            return
