"""Small training inputs for the child-process, remote and OOM tests (demo model, real data)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from train_core import TrainSpec


def sample_data(demo_assets, out: Path, n_train: int = 16, n_valid: int = 4) -> Path:
    """train/valid.jsonl drawn from the demo sessions."""
    rows = []
    for f in sorted(Path(demo_assets.sessions_dir).glob("*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    (out / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:n_train + n_valid]))
    return out


def long_data(out: Path, rows: int = 64) -> Path:
    """Examples of ~1280 tokens: a batch of 64 needs far more than a 2 GiB address space."""
    answer = " ".join(["the council guards the secret answer"] * 300)
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]}
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid"):
        (out / f"{name}.jsonl").write_text((json.dumps(row) + "\n") * rows)
    return out


def small_spec(model_dir, data_dir, adapter_dir, **overrides) -> TrainSpec:
    base = dict(model=str(model_dir), data_dir=str(data_dir), adapter_dir=str(adapter_dir),
                num_layers=2, lora_rank=4, lora_alpha=8.0, dropout=0.0, learning_rate=1e-4,
                iters=4, grad_accum=1, batch_size=2, val_every=2, val_batches=1, budget_s=120.0,
                lr_schedule="constant", seed=0)
    base.update(overrides)
    return TrainSpec(**base)
