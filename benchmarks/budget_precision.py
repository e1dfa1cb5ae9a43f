"""Budget precision: how far past its training budget does a trial's training run?

    .venv/bin/python benchmarks/budget_precision.py [--runs 10] [--budget 15]

Real train_core.train on the demo model (demo.ensure_demo, 20 s of pre-training, cached
in .cache/test-demo like the tests') with data from corpus.prepare at the baseline mix.
Each run gets ITERS far beyond what fits, so the budget, not ITERS, ends it; the other
settings are the search space's baseline (grad_accum 4, rank 32, alpha 64, dropout 0.05)
at lr 1e-4 on 16 layers (the range's low end: short steps, so a few-second budget holds
a few optimizer steps even on a loaded machine).

train_core's budget covers the steps and validations, the final validation over the
whole validation split included (BudgetGuard reserves its predicted time: the last in-loop
validation's time x the split's batches / the subset's), not model loading (DESIGN: "the
running trial must be stopped by the training budget itself"); only the adapter save
follows. A probe callback reads the loop's start and each step's duration; the adapter
writer and publisher are wrapped with timers. Per run:

- loop overshoot: loop end - start - budget (negative: stopped early, as predicted, and
  now by about the final validation's time);
- final validation: the whole validation split, scored after the loop; save: the
  adapter's write and publish;
- past budget: from the loop's start to `on_end` (after publish), minus the budget;
- target: one optimizer step (grad_accum x the median step) + the measured save.

Runs alternate between the guard as it is ("reserve") and the guard without the final
validation's reserve ("no reserve": the behaviour before the fix, through a callback that
zeroes the reserve at the start), so both are measured side by side on the same load.
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


class NoReserve(TrainCallback):
    """The guard as it was before the final validation was reserved (for comparison)."""

    def on_start(self, ctx) -> None:
        ctx.final_val_ratio = 0.0


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


def one_run(model_dir: Path, data_dir: Path, out: Path, budget: float, seed: int, reserve: bool) -> dict:
    spec = TrainSpec(model=str(model_dir), data_dir=str(data_dir), adapter_dir=str(out / f"adapter-{seed}"),
                     num_layers=16, lora_rank=32, lora_alpha=64.0, dropout=0.05, learning_rate=1e-4,
                     iters=100_000, grad_accum=4, max_seq_length=1280, batch_size=4, budget_s=budget,
                     val_every=25, val_batches=4, seed=seed)
    probe = Probe()
    with SaveTimer() as save:
        result = train_core.train(spec, [probe] + ([] if reserve else [NoReserve()]), progress=False)
    step = statistics.median(probe.steps) if probe.steps else float("nan")
    past = probe.ended - probe.started - budget
    tail = probe.ended - probe.started - result.elapsed_s
    return {"stopped_by": result.stopped_by, "iters": result.iters_done, "step": step,
            "loop_over": result.elapsed_s - budget, "final_val": tail - save.seconds, "save": save.seconds,
            "past": past,
            "target": spec.grad_accum * step + save.seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--budget", type=float, default=15.0, help="training budget per run, seconds (a few times the final validation)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "test-demo")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    assets = ensure_demo(args.cache, ROOT / "council.yaml", pretrain_seconds=20, progress=False)
    data = corpus.prepare(assets.sessions_dir, ROOT / "council.yaml", args.cache / "budget-data", mix_ratio=0.5)
    print(f"demo model and data ready in {time.monotonic() - t0:.0f} s; optimised BLAS: {FAST_BLAS}")
    out = Path(tempfile.mkdtemp(prefix="budget-precision-"))
    rows: dict[str, list[dict]] = {"reserve": [], "no reserve": []}
    try:
        for i in range(args.runs):
            for name in (("reserve", "no reserve") if i % 2 == 0 else ("no reserve", "reserve")):
                r = one_run(assets.model_dir, data.dir, out, args.budget, seed=i, reserve=name == "reserve")
                rows[name].append(r)
                print(f"run {i + 1:2d} {name:10s}: {r['iters']:3d} iters (step {r['step']:.3f} s), "
                      f"stopped by {r['stopped_by']}; loop {r['loop_over']:+.3f} s, final val {r['final_val']:.3f} s, "
                      f"save {r['save']:.3f} s; past budget {r['past']:+.3f} s; target {r['target']:.3f} s")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print("\n| guard | budget | runs | optimizer step | loop overshoot | final validation | save | "
          "past budget, median (max) | target (step + save) | within target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
        top = lambda key: max(r[key] for r in rs)  # noqa: E731
        print(f"| {name} | {args.budget:g} s | {len(rs)} | {4 * med('step'):.2f} s | "
              f"{med('loop_over'):+.2f} s (max {top('loop_over'):+.2f}) | {med('final_val'):.2f} s | "
              f"{med('save'):.2f} s | {med('past'):+.2f} s (max {top('past'):+.2f}) | {med('target'):.2f} s | "
              f"{sum(r['past'] <= r['target'] for r in rs)}/{len(rs)} |")
    print("(medians over the runs; optimizer step = grad_accum 4 x the median iteration)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
