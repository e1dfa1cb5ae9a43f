"""What `python -m evaluation` and `python -m evaluation.benchmark` share: exit codes and
the suite / budget / judge options, so that their runs line up case for case."""
from __future__ import annotations

import argparse

from .judge import JudgeConfig
from .suite import DEFAULT_SUITE_DIR

EXIT_OK, EXIT_CHECK, EXIT_CONFIG, EXIT_BUDGET = 0, 1, 2, 3


def csv_arg(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_suite_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--suite", default=str(DEFAULT_SUITE_DIR), help="folder of suite *.yaml files")
    ap.add_argument("--council", default="council.yaml")
    ap.add_argument("--seed", type=int, default=0, help="generation sampling and the smoke pick")
    ap.add_argument("--splits", type=csv_arg, default=("dev", "holdout"))
    ap.add_argument("--categories", type=csv_arg, default=None)
    ap.add_argument("--max-tokens", type=int, default=32, help="reply budget per case (a case may set its own)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--min-dev-per-cell", type=int, default=5,
                    help="refuse a suite thinner than this per agent×category")
    ap.add_argument("--min-holdout-per-cell", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="one case per category: a canary before a long run")
    ap.add_argument("--resume", action="store_true", help="carry on from <out>.partial.jsonl")
    ap.add_argument("--budget-s", type=float, default=None, help="stop (exit 3, partial results kept) after this long")
    ap.add_argument("--max-tokens-total", type=int, default=None, help="... or after this many tokens")
    ap.add_argument("--judge-model", help="LiteLLM model that grades `judge` cases (without it they are skipped)")
    ap.add_argument("--judge-api-base")
    ap.add_argument("--judge-api-key-env", help="environment variable holding the judge's API key")
    ap.add_argument("--judge-max-tokens", type=int, default=64)
    ap.add_argument("--no-progress", action="store_true")


def judge_from_args(args: argparse.Namespace) -> JudgeConfig | None:
    if not args.judge_model:
        return None
    return JudgeConfig(args.judge_model, args.judge_api_base, args.judge_api_key_env, args.judge_max_tokens)
