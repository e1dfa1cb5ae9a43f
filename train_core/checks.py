"""Quick Council checks of the adapter in training, at the validation checkpoints.

The parent renders the cases (system prompt + user prompt, choice texts, the answer) into
TrainSpec.checks, so the training process needs neither the suite nor council.yaml, and a
remote node gets them inside the spec it already receives. Here they are scored with the
model already loaded (no second load), by the eval's own log-likelihood choice scorer
(evaluation.likelihood + evaluation.scorers.score_choice), so a checkpoint's jailbreak
mean is the same quantity the gate later reads from the full eval.

TrainSpec.checks (an empty dict: no checks):
  {"cases": [{"id", "group", "messages": [{role, content}...], "choices": [str...], "answer": int}],
                        group: a name or a list of names (a case may count in several)
   "every": k,          score at every k-th validation (default 1: all of them)
   "max_checks": m,     at most m checks in the run (default 8): `every` grows for long runs
   "from_step": s,      not before this step (default 1: the untrained step 0 says nothing)
   "batch_size": b}     choices per forward (default 32)

A check's result: {"step", "elapsed_s", "check_s", "groups": {group: {"n", "mean", "scores"}}}.

Import direction: train_core imports evaluation lazily, here only, and only when a spec
carries checks; a training node without evaluation/ still trains (the check reports an
error once and is off for the run, and nothing is vetoed without evidence).
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

CHECK_DEFAULTS = {"every": 1, "from_step": 1, "batch_size": 32, "max_checks": 8}
_CASE_KEYS = ("id", "group", "messages", "choices", "answer")


def check_problem(checks: Any) -> str | None:
    """What is wrong with a TrainSpec.checks value, or None (an empty dict is off)."""
    if not isinstance(checks, dict):
        return f"expected an object, got {type(checks).__name__}"
    if not checks:
        return None
    unknown = sorted(set(checks) - {"cases", *CHECK_DEFAULTS})
    if unknown:
        return f"unknown key {unknown[0]!r} (known: cases, {', '.join(CHECK_DEFAULTS)})"
    for key in CHECK_DEFAULTS:
        value = checks.get(key, CHECK_DEFAULTS[key])
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "from_step" else 1):
            return f"{key}: expected a positive integer, got {value!r}"
    cases = checks.get("cases")
    if not isinstance(cases, list) or not cases:
        return "cases: expected a non-empty list"
    for i, case in enumerate(cases):
        problem = _case_problem(case)
        if problem:
            return f"cases[{i}]: {problem}"
    return None


def _case_problem(case: Any) -> str | None:
    if not isinstance(case, dict) or sorted(case) != sorted(_CASE_KEYS):
        return f"expected the keys {', '.join(_CASE_KEYS)}"
    choices, answer = case["choices"], case["answer"]
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        return "choices: expected at least two non-empty strings"
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        return f"answer: {answer!r} is not an index of choices"
    if not isinstance(case["messages"], list) or not case["messages"]:
        return "messages: expected a non-empty list"
    if not _group_names(case["group"]):
        return "group: expected a name or a non-empty list of names"
    return None


def _group_names(group: Any) -> list[str]:
    names = group if isinstance(group, list) else [group]
    return names if names and all(isinstance(g, str) and g for g in names) else []


def effective_every(checks: dict[str, Any], iters: int, val_every: int) -> int:
    """Every how many validations a check runs: `every`, raised so that a long run (a real
    night validates 30-odd times) gets at most `max_checks` checks; each costs seconds."""
    every = int(checks.get("every", CHECK_DEFAULTS["every"]))
    validations = max(1, (iters - int(checks.get("from_step", CHECK_DEFAULTS["from_step"]))) // val_every + 1)
    cap = int(checks.get("max_checks", CHECK_DEFAULTS["max_checks"]))
    return max(every, -(-validations // cap))


class Checker:
    """Scores the spec's cases on the model in training; tokenised once, at the start."""

    def __init__(self, checks: dict[str, Any], iters: int, val_every: int):
        self.cases: list[dict[str, Any]] = list(checks["cases"])
        self.every = effective_every(checks, iters, val_every)
        self.from_step = int(checks.get("from_step", CHECK_DEFAULTS["from_step"]))
        self.batch_size = int(checks.get("batch_size", CHECK_DEFAULTS["batch_size"]))
        self._validations = 0
        self._sets: list[Any] | None = None
        self.error: str | None = None

    def due(self, step: int) -> bool:
        """Whether the validation at `step` (the next one, when asked ahead) is checked."""
        return self.error is None and step >= self.from_step and self._validations % self.every == 0

    def count_validation(self, step: int) -> None:
        if step >= self.from_step:
            self._validations += 1

    def prepare(self, tokenizer: Any) -> None:
        try:
            from evaluation.likelihood import make_choice_set
            self._sets = [make_choice_set(i, tokenizer, c["messages"], c["choices"]) for i, c in enumerate(self.cases)]
        except Exception as exc:  # a node without evaluation/, a template that fails: no checks
            self.error = f"{type(exc).__name__}: {exc}"

    def run(self, model: Any, tokenizer: Any, step: int, elapsed_s: float) -> dict[str, Any]:
        """Per-case scores (softmax p(answer), the eval's graded choice score) by group.
        The model must be in eval mode (dropout off); the caller puts it back."""
        from evaluation.likelihood import batches, choice_logprobs, vocab_size
        from evaluation.scorers import ChoiceFields, score_choice

        t0 = time.monotonic()
        pad = getattr(tokenizer, "pad_token_id", None) or 0
        scores: list[float] = [0.0] * len(self.cases)
        for group in batches(self._sets or [], self.batch_size, vocab_size(model)):
            for s, logprobs in zip(group, choice_logprobs(model, group, pad)):
                c = self.cases[s.key]
                case = SimpleNamespace(id=c["id"], fields=ChoiceFields(choices=c["choices"], answer=c["answer"]))
                scores[s.key] = score_choice(case, logprobs).value
        groups: dict[str, dict[str, Any]] = {}
        for c, score in zip(self.cases, scores):
            for name in _group_names(c["group"]):
                groups.setdefault(name, {"scores": []})["scores"].append(round(score, 6))
        for g in groups.values():
            g["n"] = len(g["scores"])
            g["mean"] = round(sum(g["scores"]) / g["n"], 6)
        return {"step": step, "elapsed_s": round(elapsed_s, 3), "check_s": round(time.monotonic() - t0, 3),
                "groups": groups}
