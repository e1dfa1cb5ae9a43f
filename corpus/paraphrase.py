"""LLM paraphrases of the template examples' user turns, through LiteLLM, validated.

Only the user side is rewritten: the answer keeps `common.policy`'s canonical wording,
so what counts as right does not drift with the generator. A generator's output is not
trusted: a paraphrase is kept only if it is one line of text, not much shorter or longer
than the original and different from it, not degenerate (a few words repeated, runs of
punctuation), carries every value the answer depends on (tool arguments, the secret's
name, the persona named) and does not contain the answer. Rejections are
counted per reason; a generator that fails every call is a ConfigError naming it.
"""
from __future__ import annotations

import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable

from common.errors import ConfigError, one_line

from .clean import normalise, strip_think

KEEP = "_keep"  # an example's must-keep strings (set by the templates; never written out)
METHOD = "method"
_QUOTES = "\"'“”‘’`"
INSTRUCTION = ("Rewrite the user's message in different words. Keep its meaning and keep every "
               "name, number and value exactly as written. Reply with the rewritten message only.")
REJECT_REASONS = ("empty", "too_short", "multi_line", "unchanged", "too_long", "degenerate",
                  "lost_value", "leaks_answer", "error")
_WORDS = re.compile(r"\w+")
# ",." / " ." / ".." (an ellipsis "..." is fine)
_PUNCT_RUN = re.compile(r"[,;:]\s*[.,;:!?]|\s[,.;:](?!\w)|(?<!\.)\.\.(?!\.)")

Complete = Callable[[list[dict]], str]


@dataclass(frozen=True)
class GeneratorSettings:
    model: str = ""        # LiteLLM model name ("" = no generator); a local mlx_lm server
    api_base: str = ""     # is model "openai/default_model", api_base "http://127.0.0.1:PORT/v1"
    api_key_env: str = ""  # the NAME of the environment variable holding the key
    per_example: int = 1   # paraphrases asked per template example
    limit: int = 100       # template examples paraphrased at most (spread over agents x categories)
    temperature: float = 0.7
    max_tokens: int = 64
    timeout_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.model)

    def check(self) -> None:
        if not self.enabled:
            return
        for key in ("per_example", "limit", "max_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(None, f"generator_{key}", f"must be >= 1, got {getattr(self, key)}")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise ConfigError(None, "generator_api_key_env",
                              f"environment variable {self.api_key_env} is not set")

    def as_dict(self) -> dict:
        return asdict(self)  # names the key's variable, never the key


@dataclass
class Paraphrased:
    examples: list[dict]
    asked: int = 0
    rejected: Counter = field(default_factory=Counter)
    first_error: str = ""

    def as_dict(self) -> dict:
        return {"asked": self.asked, "accepted": len(self.examples),
                "rejected": {r: self.rejected[r] for r in REJECT_REASONS}}


def _user_turn(example: dict) -> int:
    return max(i for i, m in enumerate(example["messages"]) if m["role"] == "user")


def _answer(example: dict) -> str:
    return next(m["content"] for m in reversed(example["messages"]) if m["role"] == "assistant")


def validate(original: str, candidate: str, keep: list[str], answer: str) -> tuple[str, str | None]:
    """(the cleaned paraphrase, None) or (_, the reason it is rejected)."""
    text = normalise(strip_think(candidate or "")).strip().strip(_QUOTES).strip()
    for label in ("Rewritten message:", "Paraphrase:", "User:"):
        if text.lower().startswith(label.lower()):
            text = text[len(label):].strip().strip(_QUOTES).strip()
    words = _WORDS.findall(text.lower())
    if not words:
        return text, "empty"
    if len(words) < max(2, len(_WORDS.findall(original)) // 2):
        return text, "too_short"
    if "\n" in text:
        return text, "multi_line"
    if " ".join(text.lower().split()) == " ".join(original.lower().split()):
        return text, "unchanged"
    if len(text) > 3 * len(original) + 40:
        return text, "too_long"
    # A small model's failure mode: the same few words over and over, stray punctuation.
    if (len(words) >= 6 and len(set(words)) < 0.6 * len(words)) or _PUNCT_RUN.search(text):
        return text, "degenerate"
    low = text.lower()
    if any(v.lower() not in low for v in keep):
        return text, "lost_value"
    if "<tool_call>" in low or (len(answer) > 12 and answer.lower() in low):
        return text, "leaks_answer"
    return text, None


def choose(templates: list[dict], limit: int, seed: int) -> list[dict]:
    """Up to `limit` examples, round-robin over (agent, category) cells."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for e in templates:
        cells[(e["agent"], e["category"])].append(e)
    rng = random.Random(f"paraphrase-{seed}")
    order = []
    for c in sorted(cells):
        members = list(cells[c])
        rng.shuffle(members)
        order.append(members)
    out: list[dict] = []
    while len(out) < limit and any(order):
        for members in order:
            if members and len(out) < limit:
                out.append(members.pop())
    return out


def litellm_complete(settings: GeneratorSettings) -> Complete:
    # LiteLLM fetches a model price map from the network at import unless told not to: a
    # night must not wait on (or fail for) a download it does not need.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # lazy: ~3.6 s to import, and only needed with a generator configured

    litellm.suppress_debug_info = True
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    # An OpenAI-compatible local server takes any key; the client insists on one.
    key = key or ("none" if settings.api_base else None)

    def complete(messages: list[dict]) -> str:
        reply = litellm.completion(model=settings.model, api_base=settings.api_base or None,
                                   api_key=key, messages=messages,
                                   temperature=settings.temperature,
                                   max_tokens=settings.max_tokens, timeout=settings.timeout_s,
                                   num_retries=0, max_retries=0)
        return reply.choices[0].message.content or ""
    return complete


def paraphrase(templates: list[dict], settings: GeneratorSettings, seed: int,
               complete: Complete | None = None) -> Paraphrased:
    """New synthetic examples: chosen templates with their user turn rewritten."""
    out = Paraphrased([])
    if not settings.enabled or not templates:
        return out
    complete = complete or litellm_complete(settings)
    for ex in choose(templates, settings.limit, seed):
        turn = _user_turn(ex)
        original = ex["messages"][turn]["content"]
        for _ in range(settings.per_example):
            out.asked += 1
            try:
                reply = complete([{"role": "system", "content": INSTRUCTION},
                                  {"role": "user", "content": original}])
            except Exception as exc:  # any provider error: count it, the night goes on
                out.rejected["error"] += 1
                out.first_error = out.first_error or one_line(exc)[:300]
                continue
            text, reason = validate(original, reply, ex.get(KEEP, []), _answer(ex))
            if reason:
                out.rejected[reason] += 1
                continue
            messages = [dict(m) for m in ex["messages"]]
            messages[turn]["content"] = text
            out.examples.append({**ex, "messages": messages, METHOD: "paraphrase"})
    if out.asked and out.rejected["error"] == out.asked:
        raise ConfigError(None, "generator_model",
                          f"{settings.model} at {settings.api_base or 'its default endpoint'} "
                          f"failed every call: {out.first_error}")
    return out
