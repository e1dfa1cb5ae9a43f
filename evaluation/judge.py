"""The optional LLM judge: a case with `scorer: judge` names a rubric; a configured judge
model (through LiteLLM) grades the reply against it with `SCORE: 0-10`.

Without a judge, such cases are skipped and reported as skipped (never a silent 0); a
judge that fails or answers without a grade skips the case the same way, with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .llm import Endpoint, LLMError, complete
from .scorers import JudgeUnparsable, Score, judge_precheck, reply_text, score_judge

NO_JUDGE = "no judge model configured"

PROMPT = """You grade one reply of an assistant against a rubric.

Rubric: {rubric}

The user asked: {prompt}

The assistant replied: {reply}

Grade how well the reply meets the rubric, from 0 (not at all) to 10 (fully).
Answer with one line: SCORE: <integer 0-10>"""


@dataclass(frozen=True)
class JudgeConfig:
    model: str                              # a LiteLLM model name
    api_base: str | None = None
    api_key_env: str | None = None          # the variable holding its key (never the key)
    max_tokens: int = 64
    extra: dict[str, Any] = field(default_factory=dict)  # more litellm.completion kwargs
    retries: int = 2                        # transient failures (connection, 429, 5xx)

    def endpoint(self) -> Endpoint:
        return Endpoint(self.model, self.api_base, self.api_key_env, dict(self.extra), retries=self.retries)

    def describe(self) -> dict[str, Any]:
        return {**self.endpoint().describe(), "max_tokens": self.max_tokens}


@dataclass(frozen=True)
class Judged:
    score: Score | None        # None: skipped
    skipped: str | None        # why, when skipped
    tokens: int = 0            # the judge's own tokens


def judge_messages(case: Any, output: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT.format(rubric=case.fields.rubric, prompt=case.prompt,
                                                      reply=reply_text(output))}]


def judge_case(judge: JudgeConfig | None, case: Any, output: str, seed: int | None = 0) -> Judged:
    if judge is None:
        return Judged(None, NO_JUDGE)
    pre = judge_precheck(case, output)
    if pre is not None:  # empty or forbidden: fails any rubric, no need to ask
        return Judged(pre, None)
    try:
        reply = complete(judge.endpoint(), judge_messages(case, output), max_tokens=judge.max_tokens,
                         temperature=0.0, seed=seed)
    except LLMError as exc:
        return Judged(None, f"judge call failed: {exc}")
    try:
        return Judged(score_judge(case, {"output": output, "reply": reply.text}), None,
                      reply.prompt_tokens + reply.completion_tokens)
    except JudgeUnparsable as exc:
        return Judged(None, f"judge reply unparsable: {exc}", reply.prompt_tokens + reply.completion_tokens)
