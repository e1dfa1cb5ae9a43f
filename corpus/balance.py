"""Category and agent caps (e.g. identity <= 40%), enforced by down-sampling.

The v1 lesson: a 76%-identity mix made a strong model forget its domain. A cap names a
category or an agent and the largest share of a set of examples it may hold; an over-cap
key is cut to the largest count that fits, drawing evenly across its (source, agent,
category) cells so the rest of the mix keeps its shape. Cutting one key raises the
others' shares, so the caps are applied until none is exceeded. Every cut is reported
(and logged as a warning) with what it was, the share before and what was removed.
"""
from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from common.council import CATEGORIES
from common.errors import ConfigError

log = logging.getLogger("corpus")


@dataclass(frozen=True)
class Cut:
    scope: str       # which set of examples: "real", "synthetic", "train", "valid", ...
    key: str         # the capped category or agent
    cap: float
    share_before: float
    before: int
    removed: int

    def as_dict(self) -> dict:
        return {"scope": self.scope, "key": self.key, "cap": self.cap,
                "share_before": round(self.share_before, 4), "before": self.before,
                "removed": self.removed, "kept": self.before - self.removed}

    def message(self) -> str:
        return (f"corpus: {self.key} was {self.share_before:.1%} of {self.scope} examples, "
                f"over its cap of {self.cap:.0%}: cut {self.removed} of {self.before}")


def check_caps(caps: dict[str, float], agents: list[str]) -> dict[str, float]:
    """Caps keyed by a category or an agent name, each in (0, 1]."""
    out = {}
    for key, value in sorted(caps.items()):
        if key not in CATEGORIES and key not in agents:
            raise ConfigError(None, f"caps.{key}", f"not a category ({', '.join(CATEGORIES)}) "
                                                   f"or an agent ({', '.join(agents)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(None, f"caps.{key}", f"must be a share in (0, 1], got {value!r}")
        out[key] = float(value)
    return out


def _keys(example: dict) -> tuple[str, str]:
    return example["category"], example["agent"]


def _allowed(n_key: int, n_total: int, cap: float) -> int:
    """The largest count of the key whose share of the new total stays within the cap."""
    if cap >= 1:
        return n_key
    others = n_total - n_key
    return min(n_key, math.floor(cap * others / (1 - cap) + 1e-9))


def _spread(cells: dict[tuple, list[int]], keep: int) -> set[int]:
    """Which indices to keep: `keep` in all, shared across cells in proportion (largest
    remainder), so the key's own mix of sources and agents is kept."""
    total = sum(len(v) for v in cells.values())
    quotas = {c: keep * len(v) / total for c, v in cells.items()}
    counts = {c: int(q) for c, q in quotas.items()}
    rest = keep - sum(counts.values())
    for c in sorted(quotas, key=lambda c: (counts[c] - quotas[c], c))[:rest]:
        counts[c] += 1
    return {i for c, v in cells.items() for i in v[:counts[c]]}


def enforce(examples: list[dict], caps: dict[str, float], scope: str,
            seed: int) -> tuple[list[dict], list[Cut]]:
    """Down-sample until every capped key is within its cap; order is preserved."""
    cuts: list[Cut] = []
    alive = list(range(len(examples)))
    rng = random.Random(f"balance-{seed}-{scope}")
    for _ in range(len(caps) * 8 + 1):  # each pass cuts something or stops
        counts = Counter(k for i in alive for k in _keys(examples[i]) if k in caps)
        over = [k for k in sorted(caps) if counts[k] > _allowed(counts[k], len(alive), caps[k])]
        if not over:
            break
        key = max(over, key=lambda k: (counts[k] / len(alive) - caps[k], k))
        keep = _allowed(counts[key], len(alive), caps[key])
        cells: dict[tuple, list[int]] = defaultdict(list)
        for i in alive:
            if key in _keys(examples[i]):
                e = examples[i]
                cells[(e["source"], e["agent"], e["category"])].append(i)
        for v in cells.values():
            rng.shuffle(v)
        kept = _spread(dict(sorted(cells.items())), keep)
        member = {i for v in cells.values() for i in v}
        cuts.append(Cut(scope, key, caps[key], counts[key] / len(alive), counts[key],
                        counts[key] - keep))
        alive = [i for i in alive if i not in member or i in kept]
    return [examples[i] for i in alive], _merge(cuts)


def _merge(cuts: list[Cut]) -> list[Cut]:
    """One Cut per key and scope (a key can be cut in several passes)."""
    merged: dict[tuple, Cut] = {}
    for c in cuts:
        first = merged.get((c.scope, c.key))
        merged[(c.scope, c.key)] = c if first is None else Cut(
            c.scope, c.key, c.cap, first.share_before, first.before, first.removed + c.removed)
    return list(merged.values())


def warn(cuts: list[Cut]) -> None:
    for c in cuts:
        log.warning(c.message())


def shares(examples: list[dict], field: str) -> dict[str, float]:
    counts = Counter(e[field] for e in examples)
    total = sum(counts.values()) or 1
    return {k: round(n / total, 4) for k, n in sorted(counts.items())}
