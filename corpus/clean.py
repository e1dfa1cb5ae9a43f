"""Cleaning, one example at a time: normalise user/assistant/tool text, strip reasoning,
scrub PII (system prompts too, but otherwise left verbatim), then drop what cannot teach
(empty, over-long, malformed tool calls), counting every reason.

`normalised_text` / `group_key` define "the same example" (case and whitespace folded,
roles and system prompt kept): exact deduplication and cluster ids use them.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from common.policy import TOOL_CLOSE, TOOL_OPEN

from .pii import scrub_text

_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL | re.IGNORECASE)
# An unclosed block at the start of a reply (a cut-off generation) is reasoning too.
_THINK_OPEN = re.compile(r"^\s*<think>.*", re.DOTALL | re.IGNORECASE)
# Zero-width characters and C0/C1 controls other than tab and newline.
_INVISIBLE = re.compile(r"[\u200b-\u200d\u2060\ufeff\x00-\x08\x0b-\x1f\x7f-\x9f]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_TOOL_CALL = re.compile(re.escape(TOOL_OPEN) + r"(.*?)" + re.escape(TOOL_CLOSE), re.DOTALL)

DROP_REASONS = ("empty", "too_long", "tool_call_json")


def normalise(text: str) -> str:
    """NFC, no invisible characters, \\n line ends, no trailing spaces or runs of blank lines."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _BLANK_LINES.sub("\n\n", _TRAILING.sub("\n", text))
    return text.strip()


def strip_think(text: str) -> str:
    return _THINK_OPEN.sub("", _THINK.sub("", text)).strip()


def normalised_text(example: dict) -> str:
    """Case and whitespace folded, roles kept: what "the same example" means."""
    parts = [f"{m['role']}: {' '.join(m['content'].split()).lower()}" for m in example["messages"]]
    return "\n".join(parts)


def group_key(example: dict) -> str:
    return hashlib.sha256(normalised_text(example).encode()).hexdigest()


def _tool_calls_ok(text: str) -> bool:
    """Every <tool_call> holds {"name": str, "arguments": object} as valid JSON."""
    if TOOL_OPEN not in text:
        return True
    if text.count(TOOL_OPEN) != text.count(TOOL_CLOSE):
        return False
    for body in _TOOL_CALL.findall(text):
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            return False
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments"), dict)):
            return False
    return True


@dataclass
class Cleaned:
    examples: list[dict]
    dropped: Counter = field(default_factory=Counter)          # reason -> n
    dropped_by_source: Counter = field(default_factory=Counter)
    scrubbed: Counter = field(default_factory=Counter)         # PII kind -> n
    examples_scrubbed: int = 0
    think_stripped: int = 0
    # System prompts repeat in every example of an agent: clean each once.
    _system: dict[str, tuple[str, Counter]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        return {"dropped": {r: self.dropped[r] for r in DROP_REASONS},
                "dropped_by_source": dict(sorted(self.dropped_by_source.items())),
                "scrubbed": dict(sorted(self.scrubbed.items())),
                "examples_scrubbed": self.examples_scrubbed,
                "think_stripped": self.think_stripped}


def _clean_system(text: str, out: Cleaned) -> str:
    """Scrubbed only: a system prompt must stay byte-for-byte what serving and the eval
    put in front of the agent (council.yaml's), or the model trains on another prompt."""
    got = out._system.get(text)
    if got is None:
        found: Counter = Counter()
        got = out._system[text] = (scrub_text(text, found), found)
    out.scrubbed.update(got[1])
    return got[0]


def clean_example(example: dict, max_chars: int, out: Cleaned) -> dict | None:
    """The cleaned example, or None (with the reason counted in `out`)."""
    before = sum(out.scrubbed.values())
    stripped = False
    messages = []
    for m in example["messages"]:
        if m["role"] == "system":
            messages.append({"role": "system", "content": _clean_system(m["content"], out)})
            continue
        text = normalise(m["content"])
        if m["role"] == "assistant" and "<think>" in text.lower():
            text, stripped = strip_think(text), True
        messages.append({"role": m["role"], "content": scrub_text(text, out.scrubbed)})
    out.think_stripped += stripped
    out.examples_scrubbed += sum(out.scrubbed.values()) > before
    reason = None
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        reason = "empty"
    elif sum(len(m["content"]) for m in messages) > max_chars:
        reason = "too_long"
    elif not all(_tool_calls_ok(m["content"]) for m in messages if m["role"] == "assistant"):
        reason = "tool_call_json"
    if reason:
        out.dropped[reason] += 1
        out.dropped_by_source[example["source"]] += 1
        return None
    return {**example, "messages": messages}


def clean(examples: list[dict], max_chars: int = 6000) -> Cleaned:
    out = Cleaned([])
    for ex in examples:
        got = clean_example(ex, max_chars, out)
        if got is not None:
            out.examples.append(got)
    return out
