"""python -m evaluation --model M [--adapter A] [--out FILE] [--suite DIR]
[--council council.yaml] [--seed N] [--splits dev,holdout] [--categories a,b] [--max-tokens N]
[--batch-size N] [--choice-mode loglik|generate] [--temperature T] [--top-p P]
[--smoke] [--check-determinism] [--resume] [--budget-s S] [--max-tokens-total N]
[--judge-model M [--judge-api-base URL] [--judge-api-key-env VAR]] [--no-progress]

Exit codes: 0 ok; 1 a check failed (--check-determinism found differing cases, --smoke
found broken scores); 2 bad input (one line on stderr naming the file and key); 3 the
budget stopped the run (partial results kept in <out>.partial.jsonl: rerun with --resume).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.errors import ConfigError, one_line

from .cli import EXIT_BUDGET, EXIT_CHECK, EXIT_CONFIG, EXIT_OK, add_suite_args, judge_from_args
from .resume import BudgetExceeded
from .results import write_eval_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m evaluation",
                                 description="Evaluate a model (+ LoRA adapter) on the Council suite.")
    ap.add_argument("--model", required=True, help="base model folder")
    ap.add_argument("--adapter", help="adapter folder (adapters.safetensors + adapter_config.json)")
    ap.add_argument("--out", help="where to write the results (+ .sha256); default: <adapter>/eval_results.json, "
                                  "or ./eval_results.json without an adapter (a smoke run writes only with --out)")
    add_suite_args(ap)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--choice-mode", default="loglik", choices=("loglik", "generate"),
                    help="generate: score choice cases from the generated reply, as the LiteLLM benchmark does")
    ap.add_argument("--check-determinism", action="store_true", help="run twice; exit 1 unless every case is identical")
    return ap.parse_args(argv)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_tables(results: dict[str, Any], title: str = "Council eval") -> None:
    from rich.console import Console
    from rich.table import Table

    cats = list(results["per_category"])
    t = Table(title=f"{title} (dev): overall {_fmt(results['overall'])}, "
                    f"holdout {_fmt(results['holdout']['overall'])}, {results['n_cases']} cases, "
                    f"{results['elapsed_s']:.1f} s")
    t.add_column("agent")
    for c in cats:
        t.add_column(c, justify="right")
    t.add_column("agent", justify="right", style="bold")
    t.add_column("latency ms (mean/p95)", justify="right")
    lat = results.get("latency_ms", {}).get("per_agent", {})
    for agent, row in results["per_agent_category"].items():
        la = lat.get(agent, {})
        t.add_row(agent, *(_fmt(row.get(c)) for c in cats), _fmt(results["per_agent"][agent]),
                  f"{la.get('mean', '-')}/{la.get('p95', '-')}")
    t.add_row("category", *(_fmt(results["per_category"][c]) for c in cats), _fmt(results["overall"]), "",
              style="bold")
    console = Console()
    console.print(t)
    hold = results["holdout"]
    if hold["overall"] is not None:
        console.print("holdout by category: " + ", ".join(f"{c} {_fmt(v)}" for c, v in hold["per_category"].items()))
    console.print("labels (dev): " + ", ".join(f"{k} {v}" for k, v in results["labels"].items()))
    tok = results.get("tokens") or {}
    console.print(f"tokens: {tok.get('prompt', 0)} prompt + {tok.get('completion', 0)} completion")
    if results.get("skipped"):
        reasons = sorted({s["skipped"] for s in results["skipped"]})
        console.print(f"skipped (not scored, not counted): {len(results['skipped'])} case(s): " + "; ".join(reasons))


def make_config(args: argparse.Namespace):
    from .harness import EvalConfig

    return EvalConfig(model=args.model, adapter=args.adapter, suite_dir=args.suite, council_path=args.council,
                      splits=args.splits, max_tokens=args.max_tokens, seed=args.seed, batch_size=args.batch_size,
                      categories=args.categories, min_dev_per_cell=args.min_dev_per_cell,
                      min_holdout_per_cell=args.min_holdout_per_cell, choice_mode=args.choice_mode,
                      temperature=args.temperature, top_p=args.top_p, smoke=args.smoke,
                      budget_s=args.budget_s, max_tokens_total=args.max_tokens_total, judge=judge_from_args(args))


def _determinism(cfg: Any, args: argparse.Namespace) -> int:
    from .harness import check_determinism

    report = check_determinism(cfg, progress=not args.no_progress)
    n = len(report.first["cases"])
    if report.ok:
        print(f"deterministic: {n} cases, identical score, label and output in both runs")
        if args.out:
            write_eval_results(args.out, report.first)
        return EXIT_OK
    print(f"NOT deterministic: {len(report.mismatches)} of {n} cases differ between two runs:", file=sys.stderr)
    for m in report.mismatches[:20]:
        print(f"  {m['id']}: {m['first']!r} vs {m['second']!r}", file=sys.stderr)
    return EXIT_CHECK


def _smoke(cfg: Any, args: argparse.Namespace) -> int:
    from .harness import run_eval, smoke_problems

    results = run_eval(cfg, progress=not args.no_progress)
    print_tables(results, "Council eval SMOKE")
    if args.out:
        write_eval_results(args.out, results)
    problems = smoke_problems(results)
    for p in problems:
        print(f"smoke: {p}", file=sys.stderr)
    print(f"smoke {'FAILED' if problems else 'ok'}: {results['n_cases']} cases in {results['elapsed_s']:.2f} s")
    return EXIT_CHECK if problems else EXIT_OK


def _fast_blas() -> None:
    """Linux CPU: mlx's GEMM through OpenBLAS (about 2x on the demo), before mlx loads;
    best effort, as in train_core."""
    try:
        from common.fastblas import enable
        enable()
    except Exception:  # an optimisation must never stop an eval
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _fast_blas()
    try:
        cfg = make_config(args)
        if args.check_determinism:
            return _determinism(cfg, args)
        if args.smoke:
            return _smoke(cfg, args)
        from .harness import evaluate_to_file

        out = args.out or str(Path(args.adapter or ".") / "eval_results.json")
        results = evaluate_to_file(cfg, out, resume=args.resume, progress=not args.no_progress)
    except BudgetExceeded as exc:
        if exc.results and exc.results["n_cases"]:
            print_tables(exc.results, "Council eval PARTIAL")
        done = exc.results["n_cases"] + exc.results["n_skipped"] if exc.results else 0
        print(f"budget exceeded: {exc.reason}; {done} case(s) done, partial results in {exc.journal}; "
              f"rerun with --resume to finish", file=sys.stderr)
        return EXIT_BUDGET
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    print_tables(results)
    print(f"wrote {out} (+ .sha256)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
