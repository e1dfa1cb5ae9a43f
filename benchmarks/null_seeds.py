"""The real null: one adapter config re-trained with several seeds, every adapter evaluated.

    nice -n 10 .venv/bin/python benchmarks/null_seeds.py [--seeds 8] [--out benchmarks/data/null_seeds_demo.json]

The config is benchmarks/false_promotion.py's TRAIN (the demo's warm-start config #2:
LEARNING_RATE 1e-4, NUM_LAYERS 48, the rest at the search-space baseline, ITERS 800 x the
demo's iters_scale 0.15), trained on the demo model exactly as generate_real trains seeds 0
and 1 there (and cached in the same place, so those two are shared). ITERS caps the
training, not the wall clock (--budget-s is only a safety net, generous for a loaded machine),
so load does not change what a seed learns; a seed cut short stops the run (exit 1).

The adapters differ only by their seed, so any score difference between them is noise a
gate must not take for improvement. Their per-case scores (every split) go to a small JSON
file that benchmarks/false_promotion.py --null-json reads; it is rewritten after every seed,
so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from common.errors import ConfigError  # noqa: E402

NULL_VERSION = "null-seeds-1"
DEFAULT_OUT = ROOT / "benchmarks" / "data" / "null_seeds_demo.json"


def compact(evals: Sequence[tuple[int, dict]], config: dict) -> dict[str, Any]:
    """{cases: [{id, agent, category, split}], seeds: {seed: {overall, holdout, scores}}}: the
    per-case scores of every seed in one case order (the first eval's)."""
    first = evals[0][1]
    cases = [{k: str(c.get(k)) for k in ("id", "agent", "category", "split")} for c in first["cases"]]
    order = [c["id"] for c in cases]
    seeds: dict[str, Any] = {}
    for seed, res in evals:
        by_id = {str(c["id"]): float(c["score"]) for c in res["cases"]}
        if set(by_id) != set(order):
            raise ConfigError(None, "cases", f"seed {seed} was scored on other cases than seed {evals[0][0]}")
        seeds[str(seed)] = {"overall": float(res["overall"]),
                            "holdout": (res.get("holdout") or {}).get("overall"),
                            "scores": [round(by_id[i], 6) for i in order]}
    repro = first.get("repro") or {}
    return {"version": NULL_VERSION, "config": config, "base_model": repro.get("base_model"),
            "cases": cases, "seeds": seeds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--cache", default=str(ROOT / ".cache"))
    ap.add_argument("--council", default=str(ROOT / "council.yaml"))
    ap.add_argument("--pretrain-s", type=float, default=100.0, help="demo pre-training (autoresearch.toml's)")
    ap.add_argument("--budget-s", type=float, default=900.0,
                    help="wall-clock safety budget per seed; ITERS is what ends training")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from benchmarks.false_promotion import TRAIN, generate_real
    from common.atomic import atomic_write_json
    from evaluation.results import read_eval_results
    if args.seeds < 2:
        print("error: --seeds: need at least 2 seeds to see noise", file=sys.stderr)
        return 2
    evals: list[tuple[int, dict]] = []
    trained: dict[str, Any] = {}
    for seed in range(args.seeds):
        [path] = generate_real(Path(args.cache), Path(args.council), args.pretrain_s,
                               not args.no_progress, seeds=[seed], budget_s=args.budget_s)
        evals.append((seed, read_eval_results(path)))
        log = path.parent / "train.json"
        trained[str(seed)] = json.loads(log.read_text()) if log.exists() else None
        if trained[str(seed)] and trained[str(seed)]["iters_done"] != TRAIN["iters"]:
            print(f"error: seed {seed} stopped after {trained[str(seed)]['iters_done']} of {TRAIN['iters']} "
                  f"iterations ({trained[str(seed)]['stopped_by']}): remove {path.parent} and raise --budget-s",
                  file=sys.stderr)
            return 1
        data = compact(evals, TRAIN)
        data["trained"] = trained
        atomic_write_json(Path(args.out), data, indent=None)
        print(f"seed {seed}: dev overall {evals[-1][1]['overall']:.4f} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
