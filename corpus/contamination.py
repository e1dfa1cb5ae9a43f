"""Contamination: eval cases whose prompt the model may have trained on.

A case's overlap is the share of its prompt's word n-grams (n = 8 by default) found in
the training data; a prompt shorter than n words is one n-gram of its own length, so it
counts as seen when it appears word for word. At or over `threshold` a case is
contaminated. Only the prompt is compared: answers share `common.policy`'s wording with
the training data on purpose (that is what the model should learn), while the prompts
are what the eval keeps unseen.

By default every file of the prepared corpus is checked: train.jsonl, unused.jsonl (what
this mix ratio left out, so the verdict holds for every DATA_MIX_RATIO a night may try),
valid.jsonl and test.jsonl. Valid and test are not trained on, but which split a
conversation lands in shifts as sessions are added: a holdout prompt in tonight's valid
split is one new session away from train.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from common.errors import ConfigError

from .shingles import Vocab, example_words, ngrams, rolling, stream
from .split import UNUSED
from .store import PreparedData, update_manifest

CORPUS_FILES = ("train", UNUSED, "valid", "test")


@dataclass(frozen=True)
class CaseOverlap:
    id: str
    split: str
    agent: str
    category: str
    overlap: float
    ngrams: int
    seen: int


@dataclass(frozen=True)
class ContaminationReport:
    n: int
    threshold: float
    checked_splits: tuple[str, ...]
    data_hash: str
    suite_digest: str
    cases: int
    overlapping: tuple[CaseOverlap, ...]   # every case with any overlap, worst first
    contaminated: tuple[str, ...]          # ids at or over the threshold
    contaminated_holdout: tuple[str, ...]
    contaminated_dev: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """The night may run: no holdout case is contaminated."""
        return not self.contaminated_holdout

    def message(self) -> str:
        if self.ok:
            return (f"contamination: {len(self.contaminated_dev)} dev and 0 holdout case(s) of "
                    f"{self.cases} at or over {self.threshold:.0%} {self.n}-gram overlap")
        return (f"holdout contaminated: {len(self.contaminated_holdout)} eval case(s) overlap the "
                f"training data ({self.n}-gram overlap >= {self.threshold:.0%}): "
                + ", ".join(self.contaminated_holdout))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        for key in ("checked_splits", "contaminated", "contaminated_holdout", "contaminated_dev"):
            d[key] = list(d[key])
        d["overlapping"] = [asdict(c) for c in self.overlapping]
        return d


def _get(case: Any, name: str) -> Any:
    return case[name] if isinstance(case, dict) else getattr(case, name)


def suite_digest(cases: list[Any]) -> str:
    key = sorted((_get(c, "id"), _get(c, "split"), _get(c, "prompt")) for c in cases)
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def _case_grams(prompt: str, n: int, vocab: Vocab) -> tuple[int, np.ndarray]:
    """(gram length, the prompt's distinct gram hashes)."""
    words = np.asarray(vocab.words(prompt), dtype=np.uint64)
    size = min(n, len(words))
    return size, (np.unique(rolling(words, size)) if size else np.zeros(0, np.uint64))


def overlaps(train: Iterable[dict], cases: list[Any], n: int) -> list[tuple[Any, float, int, int]]:
    """(case, overlap, its n-grams, how many were seen) for every case."""
    vocab = Vocab()
    grams = [_case_grams(_get(c, "prompt"), n, vocab) for c in cases]
    packed = stream(example_words(e, vocab) for e in train)
    seen: dict[int, np.ndarray] = {}
    for size in sorted({s for s, g in grams if len(g)}):
        wanted = np.unique(np.concatenate([g for s, g in grams if s == size]))
        hashes, _ = ngrams(packed, size)
        seen[size] = np.intersect1d(np.unique(hashes), wanted, assume_unique=True)
    out = []
    for case, (size, g) in zip(cases, grams):
        hits = int(np.isin(g, seen[size]).sum()) if len(g) else 0
        out.append((case, hits / len(g) if len(g) else 0.0, len(g), hits))
    return out


def check_settings(n: int, threshold: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(None, "contamination_n", f"must be an integer >= 1, got {n!r}")
    if not 0 < threshold <= 1:
        raise ConfigError(None, "contamination_threshold", f"must be in (0, 1], got {threshold!r}")


def check(prepared: PreparedData, suite_cases: Iterable[Any], *, n: int = 8,
          threshold: float = 0.5, splits: tuple[str, ...] = CORPUS_FILES) -> ContaminationReport:
    """Every eval case (evaluation.suite.Case or a dict with id, split, agent, category,
    prompt) against the prepared corpus's training data. Reads only; see `record`."""
    check_settings(n, threshold)
    cases = list(suite_cases)
    train = [row for split in splits for row in prepared.rows(split)]
    rows = sorted(overlaps(train, cases, n), key=lambda r: (-r[1], _get(r[0], "id")))
    found = [CaseOverlap(_get(c, "id"), _get(c, "split"), _get(c, "agent"), _get(c, "category"),
                         round(o, 4), g, s) for c, o, g, s in rows if s]
    bad = [c for c in found if c.overlap >= threshold]
    return ContaminationReport(
        n=n, threshold=threshold, checked_splits=tuple(splits), data_hash=prepared.hash,
        suite_digest=suite_digest(cases), cases=len(cases), overlapping=tuple(found),
        contaminated=tuple(sorted(c.id for c in bad)),
        contaminated_holdout=tuple(sorted(c.id for c in bad if c.split == "holdout")),
        contaminated_dev=tuple(sorted(c.id for c in bad if c.split != "holdout")))


def record(prepared: PreparedData, report: ContaminationReport) -> PreparedData:
    """The report written into the corpus's manifest (the folder's hash does not change:
    it names the training data, which the suite does not touch)."""
    return update_manifest(prepared, "contamination", report.to_dict())
