"""Budget precision: how far past its training budget does a trial's training run?

    .venv/bin/python benchmarks/budget_precision.py [--runs 10] [--budget 6]

Real train_core.train on the demo model (demo.ensure_demo, 20 s of pre-training, cached
in .cache/test-demo like the tests') with data from corpus.prepare at the baseline mix.
Each run gets ITERS far beyond what fits, so the budget, not ITERS, ends it; the other
settings are the search space's baseline (grad_accum 4, rank 32, alpha 64, dropout 0.05)
at lr 1e-4 on 16 layers (the range's low end: short steps, so a few-second budget holds
a few optimizer steps even on a loaded machine).

train_core's budget covers the training loop (steps and validations), not model loading
(DESIGN: "the running trial must be stopped by the training budget itself"); what follows
the loop is the final validation over the whole validation split and the adapter save.
A probe callback reads the loop's start and each step's duration; the adapter writer and
publisher are wrapped with timers. Per run:

- loop overshoot: loop end - start - budget (negative: stopped early, as predicted);
- final validation: the whole validation split, scored after the loop (train_core's
  design: the budget covers the loop); save: the adapter's write and publish;
- past budget: from the loop's start to `on_end` (after publish), minus the budget;
- target: one optimizer step (grad_accum x the median step) + the measured save, against
  the time past budget without and with the final validation.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from common.fastblas import enable as enable_fast_blas  # noqa: E402

FAST_BLAS = enable_fast_blas()   # before mlx's first matrix product (common/fastblas.py)

import corpus  # noqa: E402
import train_core  # noqa: E402
from demo import ensure_demo  # noqa: E402
from train_core import TrainCallback, TrainSpec  # noqa: E402
from train_core import adapter as artifacts  # noqa: E402


@dataclass
class Probe(TrainCallback):
    started: float = 0.0
    steps: list[float] = field(default_factory=list)
    ended: float = 0.0

    def on_start(self, ctx) -> None:
        self.started = ctx.started_at

    def on_train_loss(self, step: int, loss: float, ctx) -> None:
        if ctx.last_step_s > 0:
            self.steps.append(ctx.last_step_s)

    def on_val_loss(self, step: int, loss: float, ctx) -> None:
        if ctx.last_step_s > 0 and not self.steps:
            self.steps.append(ctx.last_step_s)

    def on_end(self, result) -> None:
        self.ended = time.monotonic()


class SaveTimer:
    """Times artifacts.write_adapter + publish, the adapter save, while in use."""

    def __init__(self):
        self.seconds = 0.0
        self._orig = {}

    def __enter__(self):
        for name in ("write_adapter", "publish"):
            fn = getattr(artifacts, name)
            self._orig[name] = fn

            def timed(*a, _fn=fn, **kw):
                t0 = time.monotonic()
                try:
                    return _fn(*a, **kw)
                finally:
                    self.seconds += time.monotonic() - t0
            setattr(artifacts, name, timed)
        return self

    def __exit__(self, *exc):
        for name, fn in self._orig.items():
            setattr(artifacts, name, fn)


def one_run(model_dir: Path, data_dir: Path, out: Path, budget: float, seed: int) -> dict:
    spec = TrainSpec(model=str(model_dir), data_dir=str(data_dir), adapter_dir=str(out / f"adapter-{seed}"),
                     num_layers=16, lora_rank=32, lora_alpha=64.0, dropout=0.05, learning_rate=1e-4,
                     iters=100_000, grad_accum=4, max_seq_length=1280, batch_size=4, budget_s=budget,
                     val_every=25, val_batches=4, seed=seed)
    probe = Probe()
    with SaveTimer() as save:
        result = train_core.train(spec, [probe], progress=False)
    step = statistics.median(probe.steps) if probe.steps else float("nan")
    past = probe.ended - probe.started - budget
    tail = probe.ended - probe.started - result.elapsed_s
    return {"stopped_by": result.stopped_by, "iters": result.iters_done, "step": step,
            "loop_over": result.elapsed_s - budget, "final_val": tail - save.seconds, "save": save.seconds,
            "past": past, "past_no_val": past - (tail - save.seconds),
            "target": spec.grad_accum * step + save.seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--budget", type=float, default=6.0, help="training budget per run, seconds")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "test-demo")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    assets = ensure_demo(args.cache, ROOT / "council.yaml", pretrain_seconds=20, progress=False)
    data = corpus.prepare(assets.sessions_dir, ROOT / "council.yaml", args.cache / "budget-data", mix_ratio=0.5)
    print(f"demo model and data ready in {time.monotonic() - t0:.0f} s; optimised BLAS: {FAST_BLAS}")
    out = Path(tempfile.mkdtemp(prefix="budget-precision-"))
    rows = []
    try:
        for i in range(args.runs):
            r = one_run(assets.model_dir, data.dir, out, args.budget, seed=i)
            rows.append(r)
            print(f"run {i + 1:2d}: {r['iters']:3d} iters (step {r['step']:.3f} s), stopped by {r['stopped_by']}; "
                  f"loop {r['loop_over']:+.3f} s, final val {r['final_val']:.3f} s, save {r['save']:.3f} s; "
                  f"past budget {r['past']:+.3f} s ({r['past_no_val']:+.3f} without the final val); "
                  f"target {r['target']:.3f} s")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    top = lambda key: max(r[key] for r in rows)  # noqa: E731
    print("\n| budget | runs | optimizer step | loop overshoot | save | final validation | "
          "past budget without the final val | past budget, all | target (step + save) | within target: without / with final val |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.budget:g} s | {len(rows)} | {4 * med('step'):.2f} s | {med('loop_over'):+.2f} s (max {top('loop_over'):+.2f}) | "
          f"{med('save'):.2f} s | {med('final_val'):.2f} s | {med('past_no_val'):+.2f} s (max {top('past_no_val'):+.2f}) | "
          f"{med('past'):+.2f} s (max {top('past'):+.2f}) | {med('target'):.2f} s | "
          f"{sum(r['past_no_val'] <= r['target'] for r in rows)}/{len(rows)} / "
          f"{sum(r['past'] <= r['target'] for r in rows)}/{len(rows)} |")
    print("(medians over the runs; optimizer step = grad_accum 4 x the median iteration)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
