"""Does a demo model learn the Council's policy within a demo budget? One LoRA run and its eval.

    nice -n 10 .venv/bin/python benchmarks/policy_run.py [--model smollm2|demo] --lr 2e-4 --iters 120 \
        --grad-accum 1 --layers 8 --rank 16 [--categories jailbreak,isolation] --out /tmp/smol-run

The demo build (python -m demo --model smollm2 or the tiny one, cached), its sessions
prepared by corpus.prepare (mix 0.5), train_core.train, then the eval the night runs (all
categories unless --categories). Prints train and eval seconds and the scores; the
adapter's eval_results.json is written beside it, for study.gate.judge against the base
model's (benchmarks/README.md, "SmolLM2").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from common.fastblas import enable  # noqa: E402

FAST_BLAS = enable()   # before mlx's first import


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("smollm2", "demo"), default="smollm2")
    ap.add_argument("--pretrain-s", type=float, default=100.0, help="the tiny demo's pre-training (autoresearch.toml's)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--categories", default="", help="comma-separated; empty: all")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    import corpus
    import train_core
    from demo import ensure_model
    from evaluation import EvalConfig, run_eval, write_eval_results

    council = ROOT / "council.yaml"
    assets = ensure_model(a.model, ROOT / ".cache", council, pretrain_seconds=a.pretrain_s, progress=False)
    data = corpus.prepare(assets.sessions_dir, council, a.out / "data", mix_ratio=0.5)
    t0 = time.perf_counter()
    res = train_core.train(train_core.TrainSpec(
        model=str(assets.model_dir), data_dir=str(data.dir), adapter_dir=str(a.out / "adapter"),
        num_layers=a.layers, lora_rank=a.rank, lora_alpha=2 * a.rank, dropout=0.05, learning_rate=a.lr,
        iters=a.iters, grad_accum=a.grad_accum, batch_size=4, budget_s=3600, val_every=25, val_batches=4))
    print(f"fast BLAS {FAST_BLAS}; train {time.perf_counter() - t0:.1f} s, {res.iters_done} iters, "
          f"train loss {res.train_loss:.3f}, val loss {res.val_loss:.3f}")
    t0 = time.perf_counter()
    cats = tuple(c for c in a.categories.split(",") if c) or None
    ev = run_eval(EvalConfig(model=str(assets.model_dir), adapter=str(a.out / "adapter"),
                             council_path=str(council), categories=cats), progress=False)
    write_eval_results(a.out / "adapter" / "eval_results.json", ev)
    print(f"eval {time.perf_counter() - t0:.1f} s: overall {ev['overall']:.4f}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in ev["per_category"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
