"""The in-process model's work units: choice cases by log-likelihood in batches, replies
generated in batches. The plan depends only on the cases and the config, never on what a
journal already holds, so a resumed run computes exactly the batches an uninterrupted
run would have (and gets bit-identical scores)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from common.council import Council

from .judge import NO_JUDGE, JudgeConfig
from .likelihood import batches, choice_logprobs, make_choice_set, prompt_ids, vocab_size
from .resume import Unit
from .rows import messages, method_for, record_from_output, row_from_logprobs, skip_record
from .suite import Case


@dataclass(frozen=True)
class GenSettings:
    max_tokens: int
    batch_size: int
    temperature: float
    top_p: float
    seed: int
    judge: JudgeConfig | None
    cap: int | None = None          # a hard ceiling over every case's own budget (smoke runs)

    def limit(self, case: Case) -> int:
        n = case.max_tokens or self.max_tokens
        return min(n, self.cap) if self.cap else n


def _choice_unit(model: Any, tokenizer: Any, by_key: dict[int, Case], group: list[Any]) -> Unit:
    def run() -> list[dict[str, Any]]:
        pad = getattr(tokenizer, "pad_token_id", None) or 0
        t0 = time.perf_counter()
        means = choice_logprobs(model, group, pad)
        share = (time.perf_counter() - t0) / sum(s.n_tokens for s in group)
        # the case's share of the forward, by its tokens
        return [row_from_logprobs(by_key[s.key], m, share * s.n_tokens, s.n_tokens) for s, m in zip(group, means)]
    return Unit([by_key[s.key].id for s in group], run)


def choice_units(model: Any, tokenizer: Any, council: Council, cases: list[Case], batch_size: int) -> list[Unit]:
    by_key = dict(enumerate(cases))
    sets = [make_choice_set(k, tokenizer, messages(council, c), [ch.text for ch in c.fields.choices])
            for k, c in by_key.items()]
    return [_choice_unit(model, tokenizer, by_key, g) for g in batches(sets, batch_size, vocab_size(model))]


def _gen_unit(model: Any, tokenizer: Any, council: Council, chunk: list[Case], methods: dict[str, str],
              gs: GenSettings, unit_seed: int) -> Unit:
    def run() -> list[dict[str, Any]]:
        import mlx.core as mx
        from mlx_lm.generate import batch_generate
        from mlx_lm.sample_utils import make_sampler

        # seeded per unit: a resumed run samples exactly what an uninterrupted one would
        mx.random.seed(unit_seed)
        prompts = [prompt_ids(tokenizer, messages(council, c)) for c in chunk]
        limits = [gs.limit(c) for c in chunk]
        t0 = time.perf_counter()
        resp = batch_generate(model, tokenizer, prompts, max_tokens=limits,
                              sampler=make_sampler(temp=gs.temperature, top_p=gs.top_p),
                              completion_batch_size=gs.batch_size, prefill_batch_size=min(8, gs.batch_size),
                              return_token_ids=True)
        share = (time.perf_counter() - t0) / len(chunk)
        ids = resp.token_ids or [[] for _ in chunk]
        return [record_from_output(c, text, methods[c.id], share, len(p), len(t), gs.judge, gs.seed)
                for c, text, p, t in zip(chunk, resp.texts, prompts, ids)]
    return Unit([c.id for c in chunk], run)


def generation_units(model: Any, tokenizer: Any, council: Council, cases: list[Case], choice_mode: str,
                     gs: GenSettings) -> list[Unit]:
    """Cases that need a generated reply, in equal chunks of at most batch_size, long
    budgets together (a chunk runs as many steps as its longest case). Judge cases
    without a judge are not generated: one unit records them as skipped."""
    methods = {c.id: method_for(c, choice_mode) for c in cases}
    skipped = [c for c in cases if methods[c.id] == "judge" and gs.judge is None]
    skip_ids = {c.id for c in skipped}
    todo = sorted((c for c in cases if c.id not in skip_ids), key=gs.limit)
    units = []
    if skipped:
        units.append(Unit([c.id for c in skipped], lambda: [skip_record(c, NO_JUDGE) for c in skipped]))
    if not todo:
        return units
    n_chunks = -(-len(todo) // gs.batch_size)
    size = -(-len(todo) // n_chunks)
    for k in range(0, len(todo), size):
        units.append(_gen_unit(model, tokenizer, council, todo[k:k + size], methods, gs,
                               gs.seed * 1_000_003 + k))
    return units


def plan_units(model: Any, tokenizer: Any, council: Council, cases: list[Case], choice_mode: str,
               gs: GenSettings) -> list[Unit]:
    by_lik = [c for c in cases if method_for(c, choice_mode) == "loglik"]
    rest = [c for c in cases if method_for(c, choice_mode) != "loglik"]
    units = choice_units(model, tokenizer, council, by_lik, gs.batch_size) if by_lik else []
    return units + generation_units(model, tokenizer, council, rest, choice_mode, gs)
