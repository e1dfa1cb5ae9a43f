"""python -m evaluation.benchmark --model M [--api-base URL] [--api-key-env VAR] [--name N]
[--model M2 ...] [--out DIR] [--concurrency N] [--extra-body JSON] [suite options as in
python -m evaluation: --suite --council --seed --splits --categories --max-tokens
--temperature --top-p --smoke --resume --budget-s --max-tokens-total --judge-model ...]

Runs the Council suite through LiteLLM against any number of models (a local
OpenAI-compatible server such as `mlx_lm server`, or a cloud provider by its LiteLLM
name) and writes DIR/comparison.md, DIR/comparison.tsv and DIR/<name>/eval_results.json
per model (the local eval's format; choice cases scored from the reply, method
generate-match, so compare with `python -m evaluation --choice-mode generate`).

`--api-base`, `--api-key-env` and `--name` are given once (for every model) or once per
model, in order. Keys are read from the named environment variables (or LiteLLM's usual
ones) and are scrubbed from every file and message written.

Exit codes: 0 ok; 2 bad input, or a model could not be run (its error is in the table);
3 a budget stopped a model (its partial results kept: rerun with --resume).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_text
from common.council import Council, load_council
from common.errors import ConfigError, one_line

from .cli import EXIT_BUDGET, EXIT_CONFIG, EXIT_OK, add_suite_args, judge_from_args
from .compare import Entry, render_markdown, render_tsv
from .judge import NO_JUDGE, JudgeConfig
from .llm import Endpoint, LLMError, complete, litellm_version, redact, redact_obj, secret_values
from .results import build_results, git_commit, write_eval_results
from .resume import Budget, Journal, Unit, journal_path, run_units
from .rows import in_case_order, messages, method_for, record_from_output, skip_record
from .suite import Case, cases_digest, load_suite, smoke_cases

SMOKE_MAX_TOKENS = 8  # as the local eval's smoke run (evaluation.harness.SMOKE_MAX_TOKENS)

CHOICE_MODE = "generate"  # a chat API gives no prompt log-likelihoods


@dataclass
class BenchConfig:
    suite_dir: str
    council_path: str = "council.yaml"
    splits: tuple[str, ...] = ("dev", "holdout")
    categories: tuple[str, ...] | None = None
    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    min_dev_per_cell: int = 5
    min_holdout_per_cell: int = 1
    smoke: bool = False
    resume: bool = False
    budget_s: float | None = None         # per model
    max_tokens_total: int | None = None   # per model
    concurrency: int = 4
    judge: JudgeConfig | None = None
    secrets_env: tuple[str, ...] = field(default_factory=tuple)  # variables whose values to scrub


class ModelFailed(Exception):
    """A model's requests failed after LiteLLM's retries (message already redacted)."""


def select_cases(cfg: BenchConfig, council: Council) -> list[Case]:
    cases = load_suite(cfg.suite_dir, council, splits=cfg.splits, categories=cfg.categories,
                       min_dev_per_cell=cfg.min_dev_per_cell, min_holdout_per_cell=cfg.min_holdout_per_cell)
    cases = smoke_cases(cases, cfg.seed) if cfg.smoke else cases
    if not cases:
        raise ConfigError(cfg.suite_dir, None, f"no cases for splits {cfg.splits} and categories {cfg.categories}")
    return cases


def _ask(ep: Endpoint, council: Council, case: Case, cfg: BenchConfig, secrets: list[str]) -> dict[str, Any]:
    method = method_for(case, CHOICE_MODE)
    if method == "judge" and cfg.judge is None:
        return skip_record(case, NO_JUDGE)
    try:
        limit = case.max_tokens or cfg.max_tokens
        limit = min(limit, SMOKE_MAX_TOKENS) if cfg.smoke else limit
        reply = complete(ep, messages(council, case), max_tokens=limit, temperature=cfg.temperature,
                         seed=cfg.seed, top_p=cfg.top_p)
    except LLMError as exc:
        raise ModelFailed(f"case {case.id}: {exc}") from None
    rec = record_from_output(case, reply.text, method, reply.latency_s, reply.prompt_tokens,
                             reply.completion_tokens, cfg.judge, cfg.seed)
    return redact_obj(rec, secrets)


def api_units(ep: Endpoint, council: Council, cases: list[Case], cfg: BenchConfig, secrets: list[str]) -> list[Unit]:
    """Chunks of `concurrency` cases in suite order, their requests in parallel."""
    n = max(1, cfg.concurrency)

    def unit(chunk: list[Case]) -> Unit:
        def run() -> list[dict[str, Any]]:
            with ThreadPoolExecutor(max_workers=n) as pool:
                return list(pool.map(lambda c: _ask(ep, council, c, cfg, secrets), chunk))
        return Unit([c.id for c in chunk], run)

    return [unit(cases[k:k + n]) for k in range(0, len(cases), n)]


def fingerprint(ep: Endpoint, cfg: BenchConfig, cases: list[Case]) -> dict[str, Any]:
    return {"runner": "litellm", "endpoint": ep.describe(), "cases": cases_digest(cases), "seed": cfg.seed,
            "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "smoke": cfg.smoke, "judge": cfg.judge.describe() if cfg.judge else None}


def run_model(ep: Endpoint, cfg: BenchConfig, out: Path, *,
              progress: bool = False) -> tuple[dict[str, Any], str | None]:
    """Evaluate one endpoint; (eval_results, None) when complete, (partial results, why)
    when the budget stopped it. The journal `<out>.partial.jsonl` makes it resumable."""
    t0 = time.perf_counter()
    council = load_council(cfg.council_path)
    cases = select_cases(cfg, council)
    secrets = secret_values(cfg.secrets_env + ((ep.api_key_env,) if ep.api_key_env else ()))
    ep.api_key()  # a missing key variable is a config error before any request
    journal = Journal(journal_path(out), redact_obj(fingerprint(ep, cfg, cases), secrets), resume=cfg.resume)
    records, why = run_units(api_units(ep, council, cases, cfg, secrets), journal,
                             Budget(cfg.budget_s, cfg.max_tokens_total),
                             _ticker(progress, ep.model, len(cases)))
    rows, skipped = in_case_order(records, cases)
    repro = {"runner": "litellm", "endpoint": ep.describe(), "litellm": litellm_version(), "git_commit": git_commit(),
             "seed": cfg.seed, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
             "choice_mode": CHOICE_MODE, "smoke": cfg.smoke, "judge": cfg.judge.describe() if cfg.judge else None}
    results = build_results(rows, council.names, repro, time.perf_counter() - t0, skipped=skipped,
                            complete=why is None)
    results = redact_obj(results, secrets)
    if why is None:
        write_eval_results(out, results)
        journal.remove()
    return results, why


def _ticker(progress: bool, label: str, total: int):
    if not progress:
        return lambda n: None
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        print(f"\r  {label}: {done[0]}/{total} cases", end="" if done[0] < total else "\n", file=sys.stderr)
    return tick


# ---------------------------------------------------------------- CLI

def _per_model(values: list[str] | None, n: int, flag: str) -> list[str | None]:
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ConfigError(None, flag, f"given {len(values)} times for {n} models: give it once, or once per model")
    return values


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def endpoints_from_args(args: argparse.Namespace) -> list[tuple[str, Endpoint]]:
    n = len(args.model)
    try:
        extra = json.loads(args.extra_body) if args.extra_body else None
    except json.JSONDecodeError as exc:
        raise ConfigError(None, "--extra-body", f"not JSON: {exc.msg}") from None
    if extra is not None and not isinstance(extra, dict):
        raise ConfigError(None, "--extra-body", "must be a JSON object")
    bases, keys = _per_model(args.api_base, n, "--api-base"), _per_model(args.api_key_env, n, "--api-key-env")
    if args.name and len(args.name) != n:
        raise ConfigError(None, "--name", f"given {len(args.name)} times for {n} models: give it once per model")
    names = args.name or [None] * n
    out, seen = [], set()
    for model, base, key, name in zip(args.model, bases, keys, names):
        label = slug(name or model)
        while label in seen:
            label += "_2"
        seen.add(label)
        ep = Endpoint(model, base, key, {"extra_body": extra} if extra else {}, timeout_s=args.timeout_s,
                      retries=args.retries)
        out.append((label, ep))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m evaluation.benchmark",
                                 description="Run the Council suite through LiteLLM against several models.")
    ap.add_argument("--model", action="append", required=True, help="LiteLLM model name (repeat for more models)")
    ap.add_argument("--api-base", action="append", help="OpenAI-compatible base URL (once, or once per model)")
    ap.add_argument("--api-key-env", action="append", help="environment variable with the API key (once, or per model)")
    ap.add_argument("--name", action="append", help="label per model (default: the model name)")
    ap.add_argument("--out", default="benchmark-results", help="output folder")
    ap.add_argument("--concurrency", type=int, default=4, help="parallel requests per model")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per request")
    ap.add_argument("--retries", type=int, default=2, help="per request, on connection errors, 429 and 5xx")
    ap.add_argument("--extra-body", help='JSON sent with every request, e.g. \'{"chat_template_kwargs": '
                                         '{"enable_thinking": false}}\' for an mlx_lm server')
    add_suite_args(ap)
    return ap.parse_args(argv)


def bench_config(args: argparse.Namespace, eps: list[tuple[str, Endpoint]]) -> BenchConfig:
    if args.concurrency < 1:
        raise ConfigError(None, "--concurrency", f"must be at least 1 (got {args.concurrency})")
    judge = judge_from_args(args)
    names = tuple(ep.api_key_env for _, ep in eps if ep.api_key_env)
    names += (judge.api_key_env,) if judge and judge.api_key_env else ()
    return BenchConfig(args.suite, args.council, args.splits, args.categories, args.max_tokens, args.temperature,
                       args.top_p, args.seed, args.min_dev_per_cell, args.min_holdout_per_cell, args.smoke,
                       args.resume, args.budget_s, args.max_tokens_total, args.concurrency, judge, names)


def write_tables(out_dir: Path, entries: list[Entry], agents: list[str], secrets: list[str]) -> None:
    atomic_write_text(out_dir / "comparison.md", redact(render_markdown(entries, agents), secrets))
    atomic_write_text(out_dir / "comparison.tsv", redact(render_tsv(entries, agents), secrets))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secrets = secret_values(tuple(args.api_key_env or ()) + (args.judge_api_key_env or "",))
    try:
        eps = endpoints_from_args(args)
        cfg = bench_config(args, eps)
        agents = load_council(cfg.council_path).names
        select_cases(cfg, load_council(cfg.council_path))  # a bad suite fails before any request
    except ConfigError as exc:
        print(redact(f"error: {one_line(exc)}", secrets), file=sys.stderr)
        return EXIT_CONFIG
    out_dir = Path(args.out)
    entries, code = [], EXIT_OK
    for label, ep in eps:
        path = out_dir / label / "eval_results.json"
        pub = ep.describe()["api_base"]
        try:
            results, why = run_model(ep, cfg, path, progress=not args.no_progress)
        except (ModelFailed, ConfigError) as exc:
            msg = redact(one_line(exc), secrets)
            print(f"{label}: FAILED: {msg}", file=sys.stderr)
            entries.append(Entry(label, ep.model, pub, f"failed: {msg}", None))
            code = EXIT_CONFIG
            continue
        status = "ok" if why is None else f"partial: {why}"
        where = path if why is None else journal_path(path)
        entries.append(Entry(label, ep.model, pub, status, results, str(where)))
        print(f"{label}: {status}: overall {results['overall']}, {results['n_cases']} cases, "
              f"{results['n_skipped']} skipped, {results['elapsed_s']:.1f} s")
        if why is not None and code == EXIT_OK:
            print(f"{label}: budget exceeded, partial results in {journal_path(path)}; rerun with --resume",
                  file=sys.stderr)
            code = EXIT_BUDGET
    write_tables(out_dir, entries, agents, secrets)
    print(f"wrote {out_dir / 'comparison.md'} and {out_dir / 'comparison.tsv'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
