"""Time-budgeted MLX LoRA fine-tuning: `train(spec, callbacks) -> TrainResult`.

Knows nothing of Optuna (the objective adapts its pruner as a TrainCallback), so a
training node needs only this package: `python -m train_core --spec spec.json`.
`run_training(spec, callbacks)` runs the same in a child process (local or, given an ssh
argv, on another node) and calls the callbacks in the parent from its event stream.
"""

# Linux CPU: mlx binds its BLAS when it is loaded, so the OpenBLAS route must be taken
# before the first `import mlx` below (best effort; a node without common/ skips it).
try:
    from common.fastblas import enable as _enable_fast_blas
except ImportError:  # pragma: no cover - a bare training node
    _enable_fast_blas = None
if _enable_fast_blas is not None:
    try:
        _enable_fast_blas()
    except Exception:  # an optimisation must never stop training
        pass

from .callbacks import (BudgetGuard, DivergenceGuard, NanGuard, StopTraining, TrainCallback,
                        TrainContext)
from .child import ChildFailed, RemoteLost, TrainingTimeout, hard_timeout_s, run_training
from .isolate import train_in_subprocess
from .oom import OutOfMemory, is_allocation_error
from .spec import TrainResult, TrainSpec
from .trainer import base_model_sha256, train

__all__ = [
    "TrainSpec", "TrainResult", "TrainCallback", "TrainContext", "StopTraining", "OutOfMemory",
    "NanGuard", "DivergenceGuard", "BudgetGuard", "train", "base_model_sha256",
    "is_allocation_error", "train_in_subprocess", "run_training", "hard_timeout_s",
    "RemoteLost", "ChildFailed", "TrainingTimeout",
]
