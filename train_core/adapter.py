"""The adapter folder: built in a temp folder beside its destination, then renamed in.

A crash at any instant leaves adapter_dir absent, the previous complete adapter, or
the new complete one; never a half-written folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from common.atomic import atomic_write_json, sha256_dir
from common.procs import pid_alive

from .spec import TrainSpec

WEIGHTS = "adapters.safetensors"
CONFIG = "adapter_config.json"
SCRATCH = ".mlx-lm-scratch"  # mlx-lm's own final save lands here; deleted before publish
_TMP_TAG, _OLD_TAG = ".tmp-", ".old-"  # + "<pid>-<random>": who made the folder


def adapter_config(spec: TrainSpec, num_layers: int, base_path: str, base_sha256: str) -> dict[str, Any]:
    """What mlx_lm.load(adapter_path=...) reads, plus the base model's identity and the spec."""
    return {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": spec.lora_rank, "scale": spec.lora_scale, "dropout": spec.dropout},
        "model": base_path,
        "base_model": {"path": base_path, "sha256": base_sha256},
        "train": {**spec.to_dict(), "checks": _checks_summary(spec.checks)},
    }


def _checks_summary(checks: dict[str, Any]) -> dict[str, Any]:
    """The check cases are the eval's, not how the adapter was trained (and tens of kB): counted, not copied."""
    out = {k: v for k, v in checks.items() if k != "cases"}
    if "cases" in checks:
        out["n_cases"] = len(checks["cases"])
    return out


def make_temp_dir(adapter_dir: Path) -> Path:
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(adapter_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}{_TMP_TAG}{os.getpid()}-", dir=adapter_dir.parent))
    (tmp / SCRATCH).mkdir()
    return tmp


def remove_stale_temp_dirs(adapter_dir: Path) -> list[Path]:
    """Temp folders a killed run left beside adapter_dir (their pid no longer runs)."""
    removed = []
    for tag in (_TMP_TAG, _OLD_TAG):
        prefix = f".{adapter_dir.name}{tag}"
        for p in adapter_dir.parent.glob(f"{prefix}*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if p.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def write_adapter(tmp: Path, model, config: dict[str, Any]) -> str:
    """Writes weights + config into tmp, fsyncs them; returns the adapter's sha256."""
    shutil.rmtree(tmp / SCRATCH, ignore_errors=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(tmp / WEIGHTS), weights)
    _fsync(tmp / WEIGHTS)
    atomic_write_json(tmp / CONFIG, config)
    return sha256_dir(tmp, "*.safetensors")


def publish(tmp: Path, adapter_dir: Path) -> None:
    """Renames tmp to adapter_dir; an existing adapter_dir is swapped out, then deleted."""
    old = None
    if adapter_dir.exists() or adapter_dir.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}{_OLD_TAG}{os.getpid()}-", dir=adapter_dir.parent))
        os.replace(adapter_dir, old / "adapter")
    os.replace(tmp, adapter_dir)
    _fsync(adapter_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(tmp: Path | None) -> None:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
