"""python -m evaluation --model M [--adapter A] [--out FILE] [--suite DIR]
[--council council.yaml] [--seed N] [--splits dev,holdout] [--categories a,b] [--max-tokens N]
[--batch-size N] [--no-progress]

Exit 0 on success, 2 on bad input (one line on stderr naming the file and key).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.errors import ConfigError, one_line

from .results import write_eval_results
from .suite import DEFAULT_SUITE_DIR


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m evaluation", description="Evaluate a model (+ LoRA adapter) on the Council suite.")
    ap.add_argument("--model", required=True, help="base model folder")
    ap.add_argument("--adapter", help="adapter folder (adapters.safetensors + adapter_config.json)")
    ap.add_argument("--out", help="where to write the results (+ .sha256); default: "
                                    "<adapter>/eval_results.json, or ./eval_results.json without an adapter")
    ap.add_argument("--suite", default=str(DEFAULT_SUITE_DIR), help="folder of suite *.yaml files")
    ap.add_argument("--council", default="council.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=_csv, default=("dev", "holdout"))
    ap.add_argument("--categories", type=_csv, default=None)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_tables(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    cats = list(results["per_category"])
    t = Table(title=f"Council eval (dev): overall {_fmt(results['overall'])}, "
                    f"holdout {_fmt(results['holdout']['overall'])}, {results['n_cases']} cases, "
                    f"{results['elapsed_s']:.1f} s")
    t.add_column("agent")
    for c in cats:
        t.add_column(c, justify="right")
    t.add_column("agent", justify="right", style="bold")
    for agent, row in results["per_agent_category"].items():
        t.add_row(agent, *(_fmt(row.get(c)) for c in cats), _fmt(results["per_agent"][agent]))
    t.add_row("category", *(_fmt(results["per_category"][c]) for c in cats), _fmt(results["overall"]), style="bold")
    console = Console()
    console.print(t)
    hold = results["holdout"]
    if hold["overall"] is not None:
        console.print("holdout by category: " + ", ".join(f"{c} {_fmt(v)}" for c, v in hold["per_category"].items()))
    console.print("labels (dev): " + ", ".join(f"{k} {v}" for k, v in results["labels"].items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from .harness import EvalConfig, run_eval

        cfg = EvalConfig(model=args.model, adapter=args.adapter, suite_dir=args.suite,
                         council_path=args.council, splits=args.splits, max_tokens=args.max_tokens,
                         seed=args.seed, batch_size=args.batch_size, categories=args.categories)
        results = run_eval(cfg, progress=not args.no_progress)
        out = args.out or str(Path(args.adapter or ".") / "eval_results.json")
        write_eval_results(out, results)
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    print_tables(results)
    print(f"wrote {out} (+ .sha256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
