"""train(spec, callbacks) -> TrainResult: a time-budgeted LoRA fine-tune on mlx-lm.

The shape follows mlx-lm's own tuner: load, freeze, LoRA on the last num_layers
blocks, mlx_lm.tuner.trainer.train with a callback and an iterate_batches wrapper.
Everything that stops a run early (budget, NaN, divergence, a caller's pruner) is a
callback raising StopTraining; the wrapper then stops yielding batches, mlx-lm's loop
ends normally, and this module writes the adapter.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.trainer import TrainingArgs, evaluate, iterate_batches
from mlx_lm.tuner.trainer import train as mlx_train
from mlx_lm.tuner.utils import linear_to_lora_layers

from common.atomic import sha256_dir, sha256_file
from common.errors import ConfigError

from . import adapter as artifacts
from .checks import Checker
from .callbacks import (BudgetGuard, DivergenceGuard, NanGuard, StopTraining, TrainCallback,
                        TrainContext, run_hooks)
from .data import fixed_batches, load_split, padded_tokens, tokenizer_fingerprint
from .events import PARENT_GONE
from .oom import OutOfMemory, is_allocation_error
from .progress import RichProgress, muted_mlx_ui
from .spec import TrainResult, TrainSpec, finite_or_none

WARMUP_FRACTION = 0.05
TRAIN_LOSS_WINDOW = 10  # TrainResult.train_loss: mean of the last steps' losses
_NEVER = 1 << 62  # steps_per_save / steps_per_eval that never come


def lr_schedule(kind: str, lr: float, total_updates: int, warmup_fraction: float = WARMUP_FRACTION):
    """Cosine decay with a short linear warmup, indexed by optimizer update (not iteration)."""
    if kind == "constant":
        return lr
    total = max(1, total_updates)
    warmup = min(total - 1, max(1, round(warmup_fraction * total))) if total > 1 else 0
    decay = optim.cosine_decay(lr, total - warmup)
    if warmup == 0:
        return decay
    ramp = optim.linear_schedule(lr / (warmup + 1), lr, warmup)
    return optim.join_schedules([ramp, decay], [warmup])


def clamp_layers(requested: int, depth: int) -> int:
    """linear_to_lora_layers silently uses the whole model above its depth: say so instead."""
    return max(1, min(requested, depth))


def base_model_sha256(model_dir: str | os.PathLike) -> str:
    """The base model's identity, as the eval computes it (evaluation.results.model_sha256).

    Imported lazily: `import train_core` stays light, and a training-only node without
    `evaluation` falls back to the same rule, kept here (a test checks they agree).
    """
    try:
        from evaluation.results import model_sha256
    except ImportError:
        return _model_sha256_fallback(model_dir)
    return model_sha256(model_dir)


def _model_sha256_fallback(model_dir: str | os.PathLike) -> str:
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*.safetensors") if p.is_file()) if root.is_dir() else []
    if not files:
        raise ConfigError(str(root), None, "no *.safetensors weight files in the model folder")
    if len(files) == 1 and files[0] == root / "model.safetensors":
        return sha256_file(files[0])
    return sha256_dir(root, "*.safetensors")


def train(spec: TrainSpec, callbacks: Sequence[TrainCallback] = (), *, progress: bool = True) -> TrainResult:
    """Trains, writes the adapter atomically to spec.adapter_dir, returns what happened.

    Raises ConfigError for bad input (missing model/data, too few examples),
    OutOfMemory when MLX fails to allocate, OSError(ENOSPC) when the adapter does not fit
    on its disk; every other exception propagates.
    """
    _check_paths(spec)
    run = _Run(spec, list(callbacks), progress)
    try:
        return run.execute()
    except (RuntimeError, MemoryError) as exc:
        if is_allocation_error(exc):
            raise OutOfMemory(f"MLX could not allocate memory: {exc}", run.partial_result()) from exc
        if out_of_space(exc, run.tmp or Path(spec.adapter_dir).parent):
            raise OSError(errno.ENOSPC, f"No space left on device for the adapter in {spec.adapter_dir} ({exc})") from exc
        raise
    finally:
        artifacts.discard(run.tmp)


_MLX_WRITE = re.compile(r"\[write\] Unable to write (\d+) bytes")


def out_of_space(exc: BaseException, folder: Path) -> bool:
    """MLX's writer reports a short write without errno ("[write] Unable to write N bytes").
    Checked before the temp adapter is removed: the disk is full when the N bytes it
    tried to write exceed what is free there now."""
    m = _MLX_WRITE.search(str(exc))
    if m is None:
        return False
    try:
        return int(m[1]) > shutil.disk_usage(folder).free
    except OSError:
        return False


def _check_paths(spec: TrainSpec) -> None:
    # mlx_lm.load treats a missing folder as a Hugging Face repo id and downloads it.
    if not (Path(spec.model) / "config.json").is_file():
        raise ConfigError(None, "model", f"{spec.model}: not a model folder (no config.json)")
    if not Path(spec.data_dir).is_dir():
        raise ConfigError(None, "data_dir", f"{spec.data_dir}: no such folder")


class _Run:
    """One training run's state; split out of train() so OOM can report how far it got."""

    def __init__(self, spec: TrainSpec, callbacks: list[TrainCallback], progress: bool):
        self.spec = spec
        self.user_callbacks = callbacks
        self.progress = progress
        self.tmp: Path | None = None
        self.ctx: TrainContext | None = None
        self.base_sha = ""
        self.layers_effective = 0

    def execute(self) -> TrainResult:
        spec = self.spec
        self.base_sha = base_model_sha256(spec.model)
        mx.random.seed(spec.seed)
        np.random.seed(spec.seed)  # mlx-lm's batch order draws from NumPy's global generator
        model, tokenizer = load(spec.model)
        data_dir = Path(spec.data_dir)
        tok_id = tokenizer_fingerprint(spec.model)
        train_set = load_split(data_dir, "train", tokenizer, mask_prompt=spec.mask_prompt,
                               max_seq_length=spec.max_seq_length, tokenizer_id=tok_id)
        valid_set = load_split(data_dir, "valid", tokenizer, mask_prompt=spec.mask_prompt,
                               max_seq_length=spec.max_seq_length, tokenizer_id=tok_id)
        if len(train_set) < spec.batch_size:
            raise ConfigError(str(data_dir / "train.jsonl"), "batch_size",
                              f"{len(train_set)} usable examples, fewer than batch_size={spec.batch_size}")
        self.layers_effective = clamp_layers(spec.num_layers, len(model.layers))
        model.freeze()
        linear_to_lora_layers(model, self.layers_effective,
                              {"rank": spec.lora_rank, "scale": spec.lora_scale, "dropout": spec.dropout})
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        self.tmp = artifacts.make_temp_dir(Path(spec.adapter_dir))

        display = RichProgress(spec.iters, spec.budget_s) if self.progress else None
        hooks = ([display] if display else []) + [NanGuard(), *self.user_callbacks,
                                                   DivergenceGuard(spec.divergence_factor),
                                                   BudgetGuard(spec.budget_s)]
        val_subset = fixed_batches(valid_set, spec.batch_size, spec.max_seq_length,
                                   limit=spec.val_batches, seed=spec.seed)
        val_all = fixed_batches(valid_set, spec.batch_size, spec.max_seq_length, limit=None, seed=spec.seed)
        ctx = self.ctx = TrainContext(spec=spec, model=model, tokenizer=tokenizer,
                                      num_layers_effective=self.layers_effective, trainable_params=trainable,
                                      final_val_ratio=padded_tokens(val_all) / max(1, padded_tokens(val_subset)))
        checker = Checker(spec.checks, spec.iters, spec.val_every) if spec.checks else None
        if checker is not None:
            checker.prepare(tokenizer)
            ctx.check_due = checker.due
        if display:
            display.__enter__()
        try:
            self._train_loop(ctx, hooks, train_set, val_subset, checker)
        finally:
            if display:
                display.__exit__(None, None, None)
        elapsed = ctx.elapsed_s
        if ctx.stop is not None and ctx.stop.stopped_by == f"callback:{PARENT_GONE}":
            # The night (or the ssh connection) that started this run is gone: nobody will
            # evaluate its adapter, so none is written (no orphan in adapters-experimental/).
            artifacts.discard(self.tmp)
            self.tmp = None
            return self._result(ctx, elapsed, None, "")

        model.eval()  # mlx-lm leaves dropout on
        final_val = _mean_loss(model, val_all)
        config = artifacts.adapter_config(spec, self.layers_effective, os.path.abspath(spec.model), self.base_sha)
        adapter_sha = artifacts.write_adapter(self.tmp, model, config)
        artifacts.publish(self.tmp, Path(spec.adapter_dir))
        self.tmp = None
        result = self._result(ctx, elapsed, final_val, adapter_sha)
        for cb in hooks:
            try:
                cb.on_end(result)
            except StopTraining:
                pass  # nothing left to stop
        return result

    def _train_loop(self, ctx: TrainContext, hooks: list, train_set, val_subset: list,
                    checker: Checker | None) -> None:
        spec = self.spec
        ctx.started_at = time.monotonic()  # the budget covers validations and steps, not loading
        run_hooks(hooks, ctx, "on_start")
        if checker is not None and checker.error:
            ctx.checks.append({"step": 0, "error": checker.error})
            run_hooks(hooks, ctx, "on_check", 0, ctx.checks[-1])
        if ctx.stop is None:
            _validate(ctx, hooks, val_subset, step=0, checker=checker)
        bridge = _Bridge(ctx, hooks, val_subset, checker)
        args = TrainingArgs(
            batch_size=spec.batch_size, iters=spec.iters, val_batches=spec.val_batches,
            steps_per_report=1, steps_per_eval=_NEVER, steps_per_save=_NEVER,
            max_seq_length=spec.max_seq_length, grad_accumulation_steps=spec.grad_accum,
            adapter_file=str(self.tmp / artifacts.SCRATCH / artifacts.WEIGHTS),
        )
        optimizer = optim.Adam(learning_rate=lr_schedule(spec.lr_schedule, spec.learning_rate, spec.total_updates))
        with muted_mlx_ui():
            bridge.mark()
            mlx_train(ctx.model, optimizer, train_set, None, args=args, training_callback=bridge,
                      iterate_batches=stoppable_batches(ctx))

    def _result(self, ctx: TrainContext, elapsed: float, final_val: float | None, adapter_sha: str) -> TrainResult:
        return TrainResult(
            adapter_dir=self.spec.adapter_dir,
            train_loss=finite_or_none(recent_mean(ctx.train_losses, TRAIN_LOSS_WINDOW)),
            val_loss=finite_or_none(final_val),
            elapsed_s=round(elapsed, 3),
            iters_done=ctx.iters_done,
            updates_done=ctx.updates_done,
            stopped_by=ctx.stop.stopped_by if ctx.stop else "iters",
            num_layers_requested=self.spec.num_layers,
            num_layers_effective=self.layers_effective,
            trainable_params=ctx.trainable_params,
            val_history=list(ctx.val_history),
            adapter_sha256=adapter_sha,
            base_model_sha256=self.base_sha,
            checks=list(ctx.checks),
        )

    def partial_result(self) -> TrainResult:
        """How far a run got before it ran out of memory; no adapter was written."""
        ctx = self.ctx
        return TrainResult(
            adapter_dir=self.spec.adapter_dir,
            train_loss=finite_or_none(recent_mean(ctx.train_losses, TRAIN_LOSS_WINDOW)) if ctx else None,
            val_loss=None,
            elapsed_s=round(ctx.elapsed_s, 3) if ctx else 0.0,
            iters_done=ctx.iters_done if ctx else 0,
            updates_done=ctx.updates_done if ctx else 0,
            stopped_by="oom",
            num_layers_requested=self.spec.num_layers,
            num_layers_effective=self.layers_effective,
            trainable_params=ctx.trainable_params if ctx else 0,
            val_history=list(ctx.val_history) if ctx else [],
            adapter_sha256="",
            base_model_sha256=self.base_sha,
        )


class _Bridge(TrainingCallback):
    """mlx-lm's per-step report -> our hooks, and validation at the fixed step indices."""

    def __init__(self, ctx: TrainContext, hooks: list, val_subset: list, checker: Checker | None = None):
        self.ctx, self.hooks, self.val_subset, self.checker = ctx, hooks, val_subset, checker
        self._mark = time.monotonic()

    def mark(self) -> None:
        self._mark = time.monotonic()

    def on_train_loss_report(self, train_info: dict) -> None:
        ctx = self.ctx
        step, loss = int(train_info["iteration"]), float(train_info["train_loss"])
        ctx.last_step_s = time.monotonic() - self._mark
        ctx.iters_done = step
        ctx.train_losses.append(loss)
        run_hooks(self.hooks, ctx, "on_train_loss", step, loss)
        if ctx.stop is None and step % ctx.spec.val_every == 0:
            _validate(ctx, self.hooks, self.val_subset, step, self.checker)
        self.mark()


def _validate(ctx: TrainContext, hooks: list, val_subset: list, step: int, checker: Checker | None = None) -> None:
    """Loss on the fixed validation subset, then the checkpoint check when one is due;
    hooks see the model in eval mode (dropout off), training resumes in train mode."""
    t0 = time.monotonic()
    loss = _mean_loss(ctx.model, val_subset)
    ctx.last_val_s = time.monotonic() - t0
    ctx.val_history.append((step, loss))
    run_hooks(hooks, ctx, "on_val_loss", step, loss)
    if checker is not None and ctx.stop is None and checker.due(step):
        ctx.model.eval()
        try:
            result = checker.run(ctx.model, ctx.tokenizer, step, ctx.elapsed_s)
        except Exception as exc:
            if is_allocation_error(exc):
                raise
            # A broken check must not cost the run: it is off from here, the final eval judges.
            checker.error = f"{type(exc).__name__}: {exc}"
            result = {"step": step, "error": checker.error}
        ctx.last_check_s = result.get("check_s", 0.0)
        ctx.checks.append(result)
        run_hooks(hooks, ctx, "on_check", step, result)
    if checker is not None:
        checker.count_validation(step)
    ctx.model.train()


def _mean_loss(model, batches: list) -> float:
    """Token-weighted mean loss (mlx-lm's evaluate) over pre-built batches; sets eval mode."""
    return evaluate(model, dataset=None, batch_size=0, num_batches=len(batches),
                    iterate_batches=lambda **_: iter(batches))


def stoppable_batches(ctx: TrainContext, base=iterate_batches):
    """mlx-lm's iterate_batches that stops yielding once a hook asked to stop."""
    def batches(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        if ctx.stop is not None:
            return
        for batch in base(dataset, batch_size, max_seq_length, loop=loop, seed=seed, comm_group=comm_group):
            yield batch
            if ctx.stop is not None:
                return
    return batches


def recent_mean(values: list[float], window: int) -> float | None:
    tail = values[-window:]
    if not tail:
        return None
    return sum(tail) / len(tail)
