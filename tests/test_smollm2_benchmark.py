"""`python -m evaluation.benchmark` on SmolLM2-135M-Instruct: the base model and a
promoted adapter (trained here for a few steps, promoted to adapters/current), each
served by a real `mlx_lm server` on 127.0.0.1 (started and stopped by PID), compared
through LiteLLM on the identity category (17 min for two categories on 2 loaded cores)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from netutil import mlx_server

ROOT = Path(__file__).resolve().parents[1]
COUNCIL = ROOT / "council.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def promoted(smollm2_assets, tmp_path_factory) -> Path:
    """adapters/current: a LoRA trained for 12 steps at lr 1e-4 on the natural sessions."""
    import corpus
    import train_core
    from study.promoter import Promoter

    root = tmp_path_factory.mktemp("smol-bench")
    data = corpus.prepare(smollm2_assets.sessions_dir, COUNCIL, root / "data", mix_ratio=0.5)
    spec = train_core.TrainSpec(model=str(smollm2_assets.model_dir), data_dir=str(data.dir),
                                adapter_dir=str(root / "experimental" / "t0"), num_layers=8, lora_rank=8,
                                lora_alpha=16, dropout=0.0, learning_rate=1e-4, iters=12, grad_accum=1,
                                batch_size=4, budget_s=300, val_every=100, val_batches=1)
    result = train_core.train(spec)
    assert result.iters_done >= 1
    promoter = Promoter(root / "adapters")
    promoter.promote(root / "experimental" / "t0", "t0")
    return promoter.current()


def test_benchmark_base_against_the_promoted_adapter(smollm2_assets, promoted, tmp_path):
    from evaluation.benchmark import main

    out = tmp_path / "bench"
    argv = ["--out", str(out), "--council", str(COUNCIL), "--categories", "identity",
            "--splits", "dev", "--min-holdout-per-cell", "0", "--max-tokens", "16", "--concurrency", "2",
            "--timeout-s", "120", "--retries", "0"]
    model = smollm2_assets.model_dir
    with mlx_server(model, tmp_path / "base.log", timeout_s=120) as base, \
            mlx_server(model, tmp_path / "promoted.log", timeout_s=120, adapter=promoted) as adapted:
        for name, url in (("base", base), ("promoted", adapted)):
            argv += ["--model", "openai/default_model", "--api-base", url, "--name", name]
        rc = main(argv)
    assert rc == 0
    base = json.loads((out / "base" / "eval_results.json").read_text())
    adapted = json.loads((out / "promoted" / "eval_results.json").read_text())
    assert base["n_cases"] == adapted["n_cases"] == 35   # 7 agents x 5 identity dev cases
    # Served through the chat template: real sentences, stopped at <|im_end|>, and the
    # adapter (trained on the Council's sessions) answers differently from the base.
    outputs = {m: [c["output"] for c in r["cases"]] for m, r in (("base", base), ("promoted", adapted))}
    assert all(o.strip() for o in outputs["base"])
    assert not any("<|im_end|>" in o or "<|im_start|>" in o for o in outputs["base"] + outputs["promoted"])
    assert outputs["base"] != outputs["promoted"]
    rows = list(csv.DictReader(open(out / "comparison.tsv"), delimiter="\t"))
    assert [r["name"] for r in rows] == ["base", "promoted"]
    assert "identity" in (out / "comparison.md").read_text()
