"""Words -> hashed n-grams, vectorised with numpy; shared by dedupe and contamination.

A text becomes lower-cased `\\w+` words, each word a 64-bit hash (blake2b, cached per
distinct word, so it is stable across runs and processes). An example is the stream of
its non-system messages, each led by a role marker word: the system prompt is the same
for every example of an agent, so counting it would make all of them look alike.

The n-gram hash of positions i..i+n-1 is a polynomial in the word hashes computed for
every position at once; windows that cross into the next document are masked out.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np

_WORD = re.compile(r"\w+")
_P = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so the polynomial mixes every word
_PAD = 0  # a filler word for documents shorter than one n-gram


class Vocab:
    """Word -> stable 64-bit hash, memoised (a corpus repeats few distinct words)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def id(self, word: str) -> int:
        got = self._ids.get(word)
        if got is None:
            got = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            got = got or 1  # 0 is the pad
            self._ids[word] = got
        return got

    def words(self, text: str) -> list[int]:
        get, new = self._ids.get, self.id
        return [get(w) or new(w) for w in _WORD.findall(text.lower())]  # ids are never 0


def example_words(example: dict, vocab: Vocab) -> list[int]:
    """The words of an example's non-system messages, each message led by its role."""
    out: list[int] = []
    for m in example["messages"]:
        if m["role"] != "system":
            out.append(vocab.id("\x00" + m["role"]))
            out += vocab.words(m["content"])
    return out


@dataclass(frozen=True)
class Stream:
    """Documents' words laid end to end: doc d is words[starts[d]:starts[d] + lengths[d]]."""
    words: np.ndarray    # uint64
    starts: np.ndarray   # int64
    lengths: np.ndarray  # int64


def stream(docs: Iterable[list[int]], min_len: int = 1) -> Stream:
    """Pack documents, padding any shorter than min_len so each has one n-gram."""
    lists = [d if len(d) >= min_len else d + [_PAD] * (min_len - len(d)) for d in docs]
    lengths = np.fromiter((len(d) for d in lists), dtype=np.int64, count=len(lists))
    starts = np.zeros(len(lists), dtype=np.int64)
    if len(lists) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    flat: list[int] = []
    for d in lists:
        flat += d
    return Stream(np.array(flat, dtype=np.uint64), starts, lengths)


def rolling(words: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window words[i:i+n] (len(words) - n + 1 of them), uint64."""
    m = len(words) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = words[:m].copy()
    for j in range(1, n):
        h *= _P
        h += words[j:j + m]
    return h


def ngrams(s: Stream, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every document's n-gram hashes, document after document, and each one's count.

    Documents shorter than n contribute nothing (pack them with min_len=n to avoid that).
    """
    h = rolling(s.words, n)
    counts = np.maximum(s.lengths - n + 1, 0)
    if not len(h):
        return h, counts
    pos = np.arange(len(h), dtype=np.int64)
    doc = np.searchsorted(s.starts, pos, side="right") - 1
    keep = pos + n <= s.starts[doc] + s.lengths[doc]
    return h[keep], counts


def fold32(h: np.ndarray) -> np.ndarray:
    """64-bit hashes -> 32-bit (what datasketch's affine32 MinHash takes)."""
    return ((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
