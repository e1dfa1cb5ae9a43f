"""Time-budgeted MLX LoRA fine-tuning: `train(spec, callbacks) -> TrainResult`.

Knows nothing of Optuna (the objective adapts its pruner as a TrainCallback), so a
training node needs only this package: `python -m train_core --spec spec.json`.
"""
from .callbacks import (BudgetGuard, DivergenceGuard, NanGuard, StopTraining, TrainCallback,
                        TrainContext)
from .isolate import train_in_subprocess
from .oom import OutOfMemory, is_allocation_error
from .spec import TrainResult, TrainSpec
from .trainer import base_model_sha256, train

__all__ = [
    "TrainSpec", "TrainResult", "TrainCallback", "TrainContext", "StopTraining", "OutOfMemory",
    "NanGuard", "DivergenceGuard", "BudgetGuard", "train", "base_model_sha256",
    "is_allocation_error", "train_in_subprocess",
]

