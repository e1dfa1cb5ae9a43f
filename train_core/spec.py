"""What a training run is asked to do (TrainSpec) and what it did (TrainResult).

Both are plain dataclasses that round-trip through JSON, so the same spec runs in
process (the objective) or on another node (`python -m train_core --spec spec.json`).
"""
from __future__ import annotations

import json
import math
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json
from common.errors import ConfigError

from .checks import check_problem

LR_SCHEDULES = ("cosine", "constant")
STOP_REASONS = ("iters", "budget", "nan", "diverged", "oom")  # plus "callback:<reason>"


@dataclass
class TrainSpec:
    model: str                      # base model folder (mlx-lm format)
    data_dir: str                   # train.jsonl + valid.jsonl, mlx-lm chat format
    adapter_dir: str                # output; appears complete or not at all
    num_layers: int = 32            # NUM_LAYERS: LoRA on the last N blocks (clamped to depth)
    lora_rank: int = 32             # LORA_RANK
    lora_alpha: float = 64.0        # LORA_ALPHA: scale = alpha / rank
    dropout: float = 0.05           # DROPOUT
    learning_rate: float = 5e-6     # LEARNING_RATE
    iters: int = 800                # ITERS
    grad_accum: int = 4             # GRAD_ACCUM
    max_seq_length: int = 1280      # MAX_SEQ_LENGTH
    batch_size: int = 4
    budget_s: float = 900.0         # wall clock for steps + validations, the final one included (not loading, save)
    val_every: int = 25             # validation at steps 0, k, 2k, ... whatever ITERS is
    val_batches: int = 4            # batches in that (fixed) validation subset
    mask_prompt: bool = True        # loss on the assistant answer only
    seed: int = 0
    lr_schedule: str = "cosine"     # "cosine" (with warmup) | "constant"; counted in updates
    divergence_factor: float = 4.0  # stop when val loss > factor x best val loss so far
    checks: dict = field(default_factory=dict)  # checkpoint checks (train_core.checks); {}: none

    def __post_init__(self) -> None:
        # Callers pass Path objects; JSON and adapter_config want plain strings.
        for name in ("model", "data_dir", "adapter_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
        for name, value in _coerce_numbers(self).items():
            setattr(self, name, value)
        problem = _first_problem(self)
        if problem:
            raise ConfigError(None, *problem)

    @property
    def lora_scale(self) -> float:
        """mlx-lm has no alpha: its LoRA output is multiplied by `scale` = alpha / rank."""
        return self.lora_alpha / self.lora_rank

    @property
    def total_updates(self) -> int:
        """Optimizer updates a full run makes; the LR schedule is as long as this."""
        return self.iters // self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> "TrainSpec":
        if not isinstance(data, dict):
            raise ConfigError(source, None, f"expected a JSON object, got {type(data).__name__}")
        hints = _hints()
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise ConfigError(source, unknown[0], f"unknown key (known: {', '.join(hints)})")
        missing = [f.name for f in fields(cls) if f.name not in data and _required(f)]
        if missing:
            raise ConfigError(source, missing[0], "required key is missing")
        for key, value in data.items():
            problem = _type_problem(hints[key], value)
            if problem:
                raise ConfigError(source, key, problem)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(source, exc.key, exc.problem) from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainSpec":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(path), None, "file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), None, f"cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(str(path), None, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return cls.from_dict(data, source=str(path))

    def to_json(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())


@dataclass
class TrainResult:
    adapter_dir: str
    train_loss: float | None
    val_loss: float | None
    elapsed_s: float
    iters_done: int
    updates_done: int
    stopped_by: str
    num_layers_requested: int
    num_layers_effective: int
    trainable_params: int
    val_history: list[tuple[int, float]] = field(default_factory=list)
    adapter_sha256: str = ""
    base_model_sha256: str = ""
    checks: list = field(default_factory=list)   # the checkpoint checks' results, in order

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a NaN or infinite loss becomes None (JSON has no NaN)."""
        out = asdict(self)
        out["train_loss"] = finite_or_none(self.train_loss)
        out["val_loss"] = finite_or_none(self.val_loss)
        out["val_history"] = [[int(s), finite_or_none(v)] for s, v in self.val_history]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainResult":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["val_history"] = [
            (int(s), math.nan if v is None else float(v)) for s, v in data.get("val_history", [])
        ]
        return cls(**kwargs)

    def to_json(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())


def finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainSpec)


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _type_problem(expected: type, value: Any) -> str | None:
    # bool is an int subclass in Python; `true` for an int is a typo, not a number.
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if ok:
        return None
    return f"expected {expected.__name__}, got {type(value).__name__} {value!r}"


def _coerce_numbers(spec: TrainSpec) -> dict[str, float]:
    """Ints given for float fields (alpha 64) become floats, so JSON and hashes are stable."""
    return {
        name: float(getattr(spec, name))
        for name, kind in _hints().items()
        if kind is float and isinstance(getattr(spec, name), int)
        and not isinstance(getattr(spec, name), bool)
    }


def _first_problem(spec: TrainSpec) -> tuple[str, str] | None:
    """The first invalid field as (key, problem), or None. Order follows the dataclass."""
    for name, kind in _hints().items():
        problem = _type_problem(kind, getattr(spec, name))
        if problem:
            return name, problem
    checks: list[tuple[str, bool, str]] = [
        ("model", bool(spec.model), "must not be empty"),
        ("data_dir", bool(spec.data_dir), "must not be empty"),
        ("adapter_dir", bool(spec.adapter_dir), "must not be empty"),
        ("num_layers", spec.num_layers >= 1, f"must be >= 1, got {spec.num_layers}"),
        ("lora_rank", spec.lora_rank >= 1, f"must be >= 1, got {spec.lora_rank}"),
        ("lora_alpha", spec.lora_alpha > 0, f"must be > 0, got {spec.lora_alpha}"),
        ("dropout", 0.0 <= spec.dropout < 1.0, f"must be in [0, 1), got {spec.dropout}"),
        ("learning_rate", math.isfinite(spec.learning_rate) and spec.learning_rate > 0,
         f"must be a finite number > 0, got {spec.learning_rate}"),
        ("iters", spec.iters >= 1, f"must be >= 1, got {spec.iters}"),
        ("grad_accum", spec.grad_accum >= 1, f"must be >= 1, got {spec.grad_accum}"),
        ("grad_accum", spec.grad_accum <= spec.iters,
         f"{spec.grad_accum} is more than iters ({spec.iters}): no optimizer update would run"),
        ("max_seq_length", spec.max_seq_length >= 2, f"must be >= 2, got {spec.max_seq_length}"),
        ("batch_size", spec.batch_size >= 1, f"must be >= 1, got {spec.batch_size}"),
        ("budget_s", spec.budget_s > 0, f"must be > 0, got {spec.budget_s}"),
        ("val_every", spec.val_every >= 1, f"must be >= 1, got {spec.val_every}"),
        ("val_batches", spec.val_batches >= 1, f"must be >= 1, got {spec.val_batches}"),
        ("lr_schedule", spec.lr_schedule in LR_SCHEDULES,
         f"must be one of {', '.join(LR_SCHEDULES)}, got {spec.lr_schedule!r}"),
        ("divergence_factor", spec.divergence_factor > 1.0,
         f"must be > 1, got {spec.divergence_factor}"),
        ("checks", check_problem(spec.checks) is None, str(check_problem(spec.checks))),
    ]
    for key, ok, problem in checks:
        if not ok:
            return key, problem
    return None
