"""From a case and what a model produced for it to one per-case record, the same for the
in-process eval and the LiteLLM benchmark (so their per-case scores are comparable).

A record is a scored row {id, agent, category, split, score, label, latency_ms, output,
explanation, method, tokens} or a skip {id, agent, category, split, skipped: why}.
`method` says how the score was made:
  loglik          choice case, softmax over the choices' summed log-probs (graded: the
                  model's probability of each whole reply, renormalised over the choices)
  generate-match  choice case, the generated reply matched to the nearest choice (0/1);
                  what an API model gets, as chat APIs return no prompt log-probs
  generate        contains / tool_call / refusal scorers on the generated reply
  judge           a judge model graded the reply against the case's rubric
"""
from __future__ import annotations

from typing import Any, Iterable

from common.council import Council

from .judge import JudgeConfig, judge_case
from .scorers import Score, choice_pick, score_case, score_choice_text
from .suite import Case

CHOICE_MODES = ("loglik", "generate")


def messages(council: Council, case: Case) -> list[dict[str, str]]:
    return [{"role": "system", "content": council.agent(case.agent).system_prompt},
            {"role": "user", "content": case.prompt}]


def method_for(case: Case, choice_mode: str) -> str:
    if case.needs == "choice":
        return "loglik" if choice_mode == "loglik" else "generate-match"
    return "judge" if case.needs == "judge" else "generate"


def _head(case: Case) -> dict[str, Any]:
    return {"id": case.id, "agent": case.agent, "category": case.category, "split": case.split}


def make_row(case: Case, score: Score, output: str, method: str, latency_s: float,
             prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {**_head(case), "score": score.value, "label": score.label,
            "latency_ms": round(latency_s * 1000, 2), "output": output, "explanation": score.explanation,
            "method": method, "tokens": {"prompt": int(prompt_tokens), "completion": int(completion_tokens)}}


def skip_record(case: Case, why: str) -> dict[str, Any]:
    return {**_head(case), "skipped": why}


def row_from_logprobs(case: Case, logprobs: list[float], latency_s: float, tokens: int) -> dict[str, Any]:
    s = score_case(case, logprobs)
    pick = choice_pick(case, logprobs)
    return make_row(case, s, case.fields.choices[pick].text, "loglik", latency_s, tokens, 0)


def record_from_output(case: Case, output: str, method: str, latency_s: float, prompt_tokens: int,
                       completion_tokens: int, judge: JudgeConfig | None, seed: int | None) -> dict[str, Any]:
    """Score a generated reply by the case's method; a judge case may come back skipped."""
    if method == "generate-match":
        s = score_choice_text(case, output)
    elif method == "judge":
        j = judge_case(judge, case, output, seed)
        if j.score is None:
            return {**skip_record(case, j.skipped or "skipped"), "output": output}
        s = j.score
    else:
        s = score_case(case, output)
    return make_row(case, s, output, method, latency_s, prompt_tokens, completion_tokens)


def is_skip(rec: dict[str, Any]) -> bool:
    return "skipped" in rec


def in_case_order(records: dict[str, dict[str, Any]], cases: Iterable[Case]) -> tuple[list[dict], list[dict]]:
    """(scored rows, skips), both in suite order, for the cases that have a record."""
    rows, skips = [], []
    for c in cases:
        rec = records.get(c.id)
        if rec is not None:
            (skips if is_skip(rec) else rows).append(rec)
    return rows, skips
