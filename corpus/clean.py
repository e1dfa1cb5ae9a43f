"""Cleaning: reasoning blocks out of assistant text, exact duplicates out of the corpus.

`group_key` is what splitting keeps together. Today it is the normalised text, so exact
duplicates (already collapsed) and anything that normalises alike share a split; a
near-duplicate pass can replace it with cluster ids without touching the splitter.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL | re.IGNORECASE)
# An unclosed block at the start of a reply (a cut-off generation) is reasoning too.
_THINK_OPEN = re.compile(r"^\s*<think>.*", re.DOTALL | re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def strip_think(text: str) -> str:
    return _THINK_OPEN.sub("", _THINK.sub("", text)).strip()


def strip_reasoning(example: dict) -> dict:
    messages = [{**m, "content": strip_think(m["content"])} if m["role"] == "assistant" else m
                for m in example["messages"]]
    return {**example, "messages": messages}


def has_answer(example: dict) -> bool:
    return any(m["role"] == "assistant" and m["content"] for m in example["messages"])


def normalised_text(example: dict) -> str:
    """Case and whitespace folded, roles kept: what "the same example" means."""
    parts = [f"{m['role']}: {_SPACE.sub(' ', m['content']).strip().lower()}"
             for m in example["messages"]]
    return "\n".join(parts)


def group_key(example: dict) -> str:
    return hashlib.sha256(normalised_text(example).encode()).hexdigest()


@dataclass(frozen=True)
class Deduped:
    examples: list[dict]
    removed: int
    removed_by_source: dict[str, int]
    empty_after_strip: int


def clean(examples: list[dict]) -> Deduped:
    """Strip reasoning, drop answerless examples, keep the first of each exact duplicate.

    Callers list real sessions before synthetic ones, so a real example wins its tie.
    """
    seen: set[str] = set()
    kept: list[dict] = []
    removed_by_source: dict[str, int] = {}
    empty = 0
    for ex in examples:
        ex = strip_reasoning(ex)
        if not has_answer(ex):
            empty += 1
            continue
        key = group_key(ex)
        if key in seen:
            removed_by_source[ex["source"]] = removed_by_source.get(ex["source"], 0) + 1
            continue
        seen.add(key)
        kept.append(ex)
    return Deduped(kept, sum(removed_by_source.values()), removed_by_source, empty)
