"""Run the Council suite against one model (+ adapter): load once, generate in batches,
score choices by log-likelihood in batches, aggregate into eval_results (results.py)."""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx

from common.council import Council, load_council
from common.errors import ConfigError

from .likelihood import batches, choice_logprobs, make_choice_set, prompt_ids, vocab_size
from .results import adapter_sha256, build_results, model_sha256, repro_info
from .scorers import choice_pick, score_case
from .suite import DEFAULT_SUITE_DIR, Case, load_suite


@dataclass
class EvalConfig:
    model: str                      # base model folder
    adapter: str | None = None      # adapter folder (adapters.safetensors + adapter_config.json)
    suite_dir: str = str(DEFAULT_SUITE_DIR)
    council_path: str = "council.yaml"
    splits: tuple[str, ...] = ("dev", "holdout")
    max_tokens: int = 32
    seed: int = 0
    batch_size: int = 32
    # None = all; ("jailbreak",) is the quick subset a training callback can afford.
    categories: tuple[str, ...] | None = None
    # A thin suite lets one case outweigh the gate's margin (DESIGN §6): refuse it.
    min_dev_per_cell: int = 5
    min_holdout_per_cell: int = 1


@dataclass
class _Work:
    outputs: dict[int, str] = field(default_factory=dict)           # case index → text
    logprobs: dict[int, list[float]] = field(default_factory=dict)   # case index → per-choice mean
    latency_s: dict[int, float] = field(default_factory=dict)


# ---------------------------------------------------------------- base-model check

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


def messages(council: Council, case: Case) -> list[dict[str, str]]:
    return [{"role": "system", "content": council.agent(case.agent).system_prompt},
            {"role": "user", "content": case.prompt}]


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)


def score_choices(model: Any, tokenizer: Any, council: Council, cases: list[Case], idx: list[int],
                  batch_size: int, work: _Work, tick) -> None:
    sets = [make_choice_set(i, tokenizer, messages(council, cases[i]), [c.text for c in cases[i].fields.choices])
            for i in idx]
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    for group in batches(sets, batch_size, vocab_size(model)):
        t0 = time.perf_counter()
        means = choice_logprobs(model, group, pad)
        share = (time.perf_counter() - t0) / sum(s.n_tokens for s in group)
        for s, m in zip(group, means):
            work.logprobs[s.key] = m
            work.latency_s[s.key] = share * s.n_tokens  # the case's share of the forward
            tick(1)


def generate_outputs(model: Any, tokenizer: Any, council: Council, cases: list[Case], idx: list[int],
                     cfg: EvalConfig, work: _Work, tick) -> None:
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=0.0)
    # Equal chunks, long budgets together: a chunk runs as many steps as its longest case.
    idx = sorted(idx, key=lambda i: cases[i].max_tokens or cfg.max_tokens)
    n_chunks = -(-len(idx) // cfg.batch_size)
    size = -(-len(idx) // n_chunks)
    for k in range(0, len(idx), size):
        chunk = idx[k:k + size]
        prompts = [prompt_ids(tokenizer, messages(council, cases[i])) for i in chunk]
        limits = [cases[i].max_tokens or cfg.max_tokens for i in chunk]
        t0 = time.perf_counter()
        resp = batch_generate(model, tokenizer, prompts, max_tokens=limits, sampler=sampler,
                              completion_batch_size=cfg.batch_size,
                              prefill_batch_size=min(8, cfg.batch_size))
        share = (time.perf_counter() - t0) / len(chunk)
        for i, text in zip(chunk, resp.texts):
            work.outputs[i] = text
            work.latency_s[i] = share
            tick(1)


# ---------------------------------------------------------------- the run

def _rows(cases: list[Case], work: _Work) -> list[dict[str, Any]]:
    rows = []
    for i, case in enumerate(cases):
        if case.needs == "choice":
            lps = work.logprobs[i]
            s = score_case(case, lps)
            output = case.fields.choices[choice_pick(case, lps)].text
        else:
            output = work.outputs[i]
            s = score_case(case, output)
        rows.append({"id": case.id, "agent": case.agent, "category": case.category, "split": case.split,
                     "score": s.value, "label": s.label, "latency_ms": round(work.latency_s[i] * 1000, 2),
                     "output": output, "explanation": s.explanation})
    return rows


def _check_paths(cfg: EvalConfig) -> None:
    # mlx_lm.load treats a missing folder as a Hugging Face repo id and goes online
    if not Path(cfg.model).is_dir():
        raise ConfigError(cfg.model, None, "model folder not found")
    if cfg.adapter and not Path(cfg.adapter).is_dir():
        raise ConfigError(cfg.adapter, None, "adapter folder not found")


def load_model(cfg: EvalConfig) -> tuple[Any, Any]:
    from mlx_lm import load

    _check_paths(cfg)
    return load(cfg.model, adapter_path=cfg.adapter)


def run_eval(cfg: EvalConfig, *, progress: bool = True, loaded: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Evaluate and return the eval_results dict. `loaded` = (model, tokenizer) already in
    memory (e.g. a training callback's model); its train/eval mode is restored after."""
    t_start = time.perf_counter()
    _check_paths(cfg)
    council = load_council(cfg.council_path)
    cases = load_suite(cfg.suite_dir, council, splits=cfg.splits, categories=cfg.categories,
                       min_dev_per_cell=cfg.min_dev_per_cell, min_holdout_per_cell=cfg.min_holdout_per_cell)
    if not cases:
        raise ConfigError(cfg.suite_dir, None, f"no cases for splits {cfg.splits} and categories {cfg.categories}")
    if cfg.adapter:  # before loading: a mismatch must cost nothing
        base_sha, ad_sha = check_base_model(cfg.model, cfg.adapter)
    else:
        base_sha, ad_sha = model_sha256(cfg.model), None
    model, tokenizer = loaded if loaded is not None else load_model(cfg)
    was_training = bool(getattr(model, "training", False))
    model.eval()  # the trainer leaves dropout on
    mx.random.seed(cfg.seed)
    work = _Work()
    choice_idx = [i for i, c in enumerate(cases) if c.needs == "choice"]
    gen_idx = [i for i, c in enumerate(cases) if c.needs == "generate"]
    try:
        with _progress(progress) as bar:
            task = bar.add_task(f"{len(cases)} cases", total=len(cases)) if bar else None
            tick = (lambda n: bar.advance(task, n)) if bar else (lambda n: None)
            if choice_idx:
                score_choices(model, tokenizer, council, cases, choice_idx, cfg.batch_size, work, tick)
            if gen_idx:
                generate_outputs(model, tokenizer, council, cases, gen_idx, cfg, work, tick)
    finally:
        if was_training:
            model.train()
    rows = _rows(cases, work)
    repro = repro_info(cfg.model, base_sha, cfg.adapter, ad_sha, cfg.seed, cfg.max_tokens)
    return build_results(rows, council.names, repro, time.perf_counter() - t_start)
