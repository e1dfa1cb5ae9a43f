"""Run the Council suite against one model (+ adapter) in process: load once, score
choices by log-likelihood and generate replies in batches (local.py), journal every
finished batch (resume.py), aggregate into eval_results (results.py).

Entry points for other packages (all parameters after `model` have defaults):
    run_eval(EvalConfig(...), progress=..., loaded=None) -> eval_results dict
    evaluate_to_file(cfg, out, resume=False)   resumable: journal beside `out`, final file atomically
    canary(cfg) -> list of problems             one case per category, before a long night
    check_determinism(cfg) -> Determinism       two runs, identical per-case results or not
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.council import Council, load_council
from common.errors import ConfigError

from .judge import JudgeConfig
from .local import GenSettings, plan_units
from .results import adapter_sha256, build_results, model_sha256, repro_info, write_eval_results
from .resume import Budget, BudgetExceeded, Journal, journal_path, run_units
from .rows import CHOICE_MODES, in_case_order
from .rows import messages as messages  # re-exported: callers build prompts the way the eval does
from .scorers import NON_FINITE
from .suite import DEFAULT_SUITE_DIR, Case, cases_digest, load_suite, smoke_cases


# A smoke run checks that every path runs (template, load, log-likelihood, generation,
# decoding, scoring), not what the model says: a few tokens show generation works.
SMOKE_MAX_TOKENS = 8


@dataclass
class EvalConfig:
    model: str                      # base model folder
    adapter: str | None = None      # adapter folder (adapters.safetensors + adapter_config.json)
    suite_dir: str = str(DEFAULT_SUITE_DIR)
    council_path: str = "council.yaml"
    splits: tuple[str, ...] = ("dev", "holdout")
    max_tokens: int = 32
    seed: int = 0                   # generation sampling (per batch) and the smoke pick
    batch_size: int = 32
    # None = all; ("jailbreak",) is the quick subset a training callback can afford.
    categories: tuple[str, ...] | None = None
    # A thin suite lets one case outweigh the gate's margin (DESIGN §6): refuse it.
    min_dev_per_cell: int = 5
    min_holdout_per_cell: int = 1
    # "loglik": choice cases by log-likelihood (graded). "generate": by the generated reply
    # matched to the nearest choice, as the LiteLLM benchmark must (0/1, comparable with it).
    choice_mode: str = "loglik"
    temperature: float = 0.0        # 0 = greedy
    top_p: float = 1.0
    smoke: bool = False             # one case per category, replies capped at SMOKE_MAX_TOKENS: a canary
    journal: str | None = None      # partial-results file; None = no journal
    resume: bool = False            # skip the cases the journal already holds
    budget_s: float | None = None   # stop at the next batch boundary after this many seconds
    max_tokens_total: int | None = None  # ... or after this many prompt + completion tokens
    judge: JudgeConfig | None = None     # scores `judge` cases; None = they are skipped


@dataclass
class Determinism:
    ok: bool
    mismatches: list[dict[str, Any]] = field(default_factory=list)   # {id, first, second}
    first: dict[str, Any] | None = None
    second: dict[str, Any] | None = None


# ---------------------------------------------------------------- checks

def check_base_model(model_dir: str | Path, adapter_dir: str | Path) -> tuple[str, str]:
    """(model sha256, adapter sha256); ConfigError if the adapter was trained on another
    base (an adapter scored on the wrong base once went unnoticed, DESIGN §6)."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    try:
        acfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(cfg_path), None, "file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(str(cfg_path), None, f"not JSON: {exc.msg}") from None
    base = acfg.get("base_model") if isinstance(acfg, dict) else None
    recorded = base.get("sha256") if isinstance(base, dict) else None
    if not isinstance(recorded, str) or not recorded:
        raise ConfigError(str(cfg_path), "base_model.sha256",
                          "missing: the adapter does not record its base model, so it cannot be checked")
    actual = model_sha256(model_dir)
    if recorded.lower() != actual:
        raise ConfigError(str(cfg_path), "base_model.sha256",
                          f"adapter was trained on {base.get('path')!r} (sha256 {recorded[:12]}…) "
                          f"but the model given is {str(model_dir)!r} (sha256 {actual[:12]}…)")
    return actual, adapter_sha256(adapter_dir)


def validate(cfg: EvalConfig) -> None:
    checks = [("choice_mode", cfg.choice_mode in CHOICE_MODES, f"must be one of {', '.join(CHOICE_MODES)}"),
              ("batch_size", cfg.batch_size >= 1, "must be at least 1"),
              ("max_tokens", cfg.max_tokens >= 1, "must be at least 1"),
              ("temperature", cfg.temperature >= 0, "must not be negative"),
              ("top_p", 0 < cfg.top_p <= 1, "must be in (0, 1]"),
              ("budget_s", cfg.budget_s is None or cfg.budget_s > 0, "must be positive"),
              ("max_tokens_total", cfg.max_tokens_total is None or cfg.max_tokens_total > 0, "must be positive")]
    for key, ok, problem in checks:
        if not ok:
            raise ConfigError(None, key, f"{problem} (got {getattr(cfg, key)!r})")


def _check_paths(cfg: EvalConfig) -> None:
    # mlx_lm.load treats a missing folder as a Hugging Face repo id and goes online
    if not Path(cfg.model).is_dir():
        raise ConfigError(cfg.model, None, "model folder not found")
    if cfg.adapter and not Path(cfg.adapter).is_dir():
        raise ConfigError(cfg.adapter, None, "adapter folder not found")
    if cfg.adapter:
        for weights in sorted(Path(cfg.adapter).glob("*.safetensors")):
            check_safetensors(weights)


def check_safetensors(path: Path) -> None:
    """A truncated or corrupt weights file is bad input (exit 2 naming it), found by
    reading its header only, before the journal or anything else is written; MLX would
    fail later with a traceback."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise ConfigError(str(path), None, "not a safetensors file: truncated or corrupt header")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(str(path), None, "not a safetensors file: its header is not JSON") from None
    data_bytes = size - 8 - n
    for name, entry in (header.items() if isinstance(header, dict) else [("header", None)]):
        if name == "__metadata__":
            continue
        span = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(span, list) and len(span) == 2 and 0 <= span[0] <= span[1] <= data_bytes):
            raise ConfigError(str(path), name, f"data offsets {span} outside the file's {data_bytes} data "
                                               "bytes: truncated or corrupt")


def load_model(cfg: EvalConfig) -> tuple[Any, Any]:
    from mlx_lm import load

    _check_paths(cfg)
    return load(cfg.model, adapter_path=cfg.adapter)


def select_cases(cfg: EvalConfig, council: Council) -> list[Case]:
    """The suite (validated and coverage-checked as a whole), filtered; a smoke run keeps
    one case per category."""
    cases = load_suite(cfg.suite_dir, council, splits=cfg.splits, categories=cfg.categories,
                       min_dev_per_cell=cfg.min_dev_per_cell, min_holdout_per_cell=cfg.min_holdout_per_cell)
    if cfg.smoke:
        cases = smoke_cases(cases, cfg.seed)
    if not cases:
        raise ConfigError(cfg.suite_dir, None, f"no cases for splits {cfg.splits} and categories {cfg.categories}")
    return cases


def fingerprint(cfg: EvalConfig, cases: list[Case], base_sha: str, ad_sha: str | None) -> dict[str, Any]:
    """What must match for a journal to be resumed: everything that changes a score."""
    return {"runner": "local", "model_sha256": base_sha, "adapter_sha256": ad_sha, "cases": cases_digest(cases),
            "seed": cfg.seed, "max_tokens": cfg.max_tokens, "batch_size": cfg.batch_size,
            "choice_mode": cfg.choice_mode, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "smoke": cfg.smoke, "judge": cfg.judge.describe() if cfg.judge else None}


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)


# ---------------------------------------------------------------- the run

def run_eval(cfg: EvalConfig, *, progress: bool = True, loaded: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Evaluate and return the eval_results dict. `loaded` = (model, tokenizer) already in
    memory (e.g. a training callback's model); its train/eval mode is restored after.
    Raises BudgetExceeded (with the partial results) when cfg's budget stops the run."""
    t_start = time.perf_counter()
    validate(cfg)
    _check_paths(cfg)
    council = load_council(cfg.council_path)
    cases = select_cases(cfg, council)
    if cfg.adapter:  # before loading: a mismatch must cost nothing
        base_sha, ad_sha = check_base_model(cfg.model, cfg.adapter)
    else:
        base_sha, ad_sha = model_sha256(cfg.model), None
    journal = (Journal(cfg.journal, fingerprint(cfg, cases, base_sha, ad_sha), resume=cfg.resume)
               if cfg.journal else None)
    budget = Budget(cfg.budget_s, cfg.max_tokens_total)
    model, tokenizer = loaded if loaded is not None else load_model(cfg)
    was_training = bool(getattr(model, "training", False))
    model.eval()  # the trainer leaves dropout on
    gs = GenSettings(cfg.max_tokens, cfg.batch_size, cfg.temperature, cfg.top_p, cfg.seed, cfg.judge,
                     SMOKE_MAX_TOKENS if cfg.smoke else None)
    try:
        units = plan_units(model, tokenizer, council, cases, cfg.choice_mode, gs)
        with _progress(progress) as bar:
            task = bar.add_task(f"{len(cases)} cases", total=len(cases)) if bar else None
            tick = (lambda n: bar.advance(task, n)) if bar else (lambda n: None)
            records, why = run_units(units, journal, budget, tick)
    finally:
        if was_training:
            model.train()
    rows, skipped = in_case_order(records, cases)
    repro = {**repro_info(cfg.model, base_sha, cfg.adapter, ad_sha, cfg.seed, cfg.max_tokens),
             "runner": "local", "choice_mode": cfg.choice_mode, "temperature": cfg.temperature,
             "top_p": cfg.top_p, "batch_size": cfg.batch_size, "smoke": cfg.smoke,
             "judge": cfg.judge.describe() if cfg.judge else None}
    results = build_results(rows, council.names, repro, time.perf_counter() - t_start,
                            skipped=skipped, complete=why is None)
    if why:
        raise BudgetExceeded(why, results, str(journal.path) if journal else None)
    return results


def evaluate_to_file(cfg: EvalConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
                     loaded: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """run_eval journaled to `<out>.partial.jsonl`; the final file written atomically (with
    its .sha256) and the journal removed. On BudgetExceeded the journal stays, so a later
    call with resume=True carries on where this one stopped."""
    jpath = journal_path(out)
    results = run_eval(replace(cfg, journal=str(jpath), resume=resume), progress=progress, loaded=loaded)
    write_eval_results(out, results)
    jpath.unlink(missing_ok=True)
    return results


def smoke_problems(results: dict[str, Any]) -> list[str]:
    """What a canary run flags beyond exceptions: scores made from broken numbers."""
    return [f"{c['id']}: {c['explanation']}" for c in results["cases"] if c["explanation"].startswith(NON_FINITE)]


def canary(cfg: EvalConfig, *, loaded: tuple[Any, Any] | None = None) -> list[str]:
    """One case per category through every code path the full eval takes (suite and
    coverage check, base-model check, load, log-likelihood, generation, scoring): [] when
    the config is sound. Bad config raises ConfigError, as the full run would, hours later."""
    results = run_eval(replace(cfg, smoke=True, journal=None, resume=False), progress=False, loaded=loaded)
    return smoke_problems(results)


def _case_key(c: dict[str, Any]) -> tuple[Any, ...]:
    return (c["score"], c["label"], c["output"])


def compare_runs(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """Every case whose (score, label, output) differs between two runs, or that only one
    run has; [] when they are identical."""
    a = {c["id"]: _case_key(c) for c in first["cases"]}
    b = {c["id"]: _case_key(c) for c in second["cases"]}
    out = [{"id": i, "first": a.get(i), "second": b.get(i)}
           for i in sorted(a.keys() | b.keys()) if a.get(i) != b.get(i)]
    skipped = [[s["id"] for s in r.get("skipped", [])] for r in (first, second)]
    if skipped[0] != skipped[1]:
        out.append({"id": "(skipped)", "first": skipped[0], "second": skipped[1]})
    return out


def check_determinism(cfg: EvalConfig, *, progress: bool = False,
                      loaded: tuple[Any, Any] | None = None) -> Determinism:
    """Two runs of the same config on the same loaded model: per-case score, label and
    output must be identical (exact equality, not approx)."""
    cfg = replace(cfg, journal=None, resume=False)
    validate(cfg)
    if cfg.adapter and loaded is None:  # refuse a wrong base before paying for the load
        check_base_model(cfg.model, cfg.adapter)
    pair = loaded if loaded is not None else load_model(cfg)
    first = run_eval(cfg, progress=progress, loaded=pair)
    second = run_eval(cfg, progress=progress, loaded=pair)
    mismatches = compare_runs(first, second)
    return Determinism(not mismatches, mismatches, first, second)
