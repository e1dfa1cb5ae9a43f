"""Splitting (a near-duplicate cluster never straddles splits) and the real-to-synthetic
mix of train.

Splits are drawn before mixing, so valid and test do not depend on DATA_MIX_RATIO: trials
with different mixes report validation loss on the same examples. Within each stratum
(source x agent x category) clusters are shuffled and cut, so every cell that has enough
examples appears in valid and test. Mixing down-samples one source evenly across its
(agent, category) cells, so the mix ratio does not reshape the category mix.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from common.errors import ConfigError

from .clean import group_key
from .records import SOURCE as REAL

SPLITS = ("train", "valid", "test")
UNUSED = "unused"  # train-pool examples this mix left out (kept for audit and contamination)


def _stratum(example: dict) -> tuple[str, str, str]:
    return (example["source"], example["agent"], example["category"])


def _take(n: int, fraction: float) -> int:
    return int(n * fraction + 0.5)


def _cluster(example: dict) -> str:
    return example.get("cluster") or group_key(example)


def assign_splits(examples: list[dict], valid_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for ex in examples:
        groups[_cluster(ex)].append(ex)
    strata: dict[tuple, list[str]] = defaultdict(list)
    for key, members in groups.items():
        strata[_stratum(members[0])].append(key)

    chosen: dict[str, list[str]] = {s: [] for s in SPLITS}
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        random.Random(f"split-{seed}-{'/'.join(stratum)}").shuffle(keys)
        n_valid, n_test = _take(len(keys), valid_fraction), _take(len(keys), test_fraction)
        chosen["valid"] += keys[:n_valid]
        chosen["test"] += keys[n_valid:n_valid + n_test]
        chosen["train"] += keys[n_valid + n_test:]
    _ensure_nonempty(chosen, valid_fraction, test_fraction)
    return {s: [ex for k in chosen[s] for ex in groups[k]] for s in SPLITS}


def _ensure_nonempty(chosen: dict[str, list[str]], valid_fraction: float,
                     test_fraction: float) -> None:
    """mlx-lm reads the first row of each file, so no requested split may be empty."""
    for split, fraction in (("valid", valid_fraction), ("test", test_fraction)):
        if fraction > 0 and not chosen[split] and len(chosen["train"]) > 1:
            chosen[split].append(chosen["train"].pop())
    if not chosen["train"]:
        raise ConfigError(None, "corpus", "too few distinct examples to fill a train split")


@dataclass(frozen=True)
class Mix:
    requested: float
    achieved: float
    real_available: int
    synthetic_available: int
    real_used: int
    synthetic_used: int

    def as_dict(self) -> dict:
        return {"requested": self.requested, "achieved": round(self.achieved, 4),
                "real_available": self.real_available,
                "synthetic_available": self.synthetic_available,
                "real_used": self.real_used, "synthetic_used": self.synthetic_used}


def mix_counts(real: int, synthetic: int, ratio: float) -> tuple[int, int]:
    """Down-sample the larger side so real / (real + synthetic) is `ratio`."""
    if real == 0 or synthetic == 0:
        return real, synthetic  # nothing to blend: keep what there is
    if real / (real + synthetic) > ratio:
        return max(1, min(real, round(synthetic * ratio / (1 - ratio)))), synthetic
    return real, max(1, min(synthetic, round(real * (1 - ratio) / ratio)))


def stratified_sample(items: list[dict], n: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """n of items, spread over (agent, category) cells in proportion (largest remainder);
    returns (chosen, left out), each in input order."""
    if n >= len(items):
        return list(items), []
    cells: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(items):
        cells[(e["agent"], e["category"])].append(i)
    quotas = {c: n * len(v) / len(items) for c, v in cells.items()}
    counts = {c: int(q) for c, q in quotas.items()}
    for c in sorted(quotas, key=lambda c: (counts[c] - quotas[c], c))[:n - sum(counts.values())]:
        counts[c] += 1
    keep: set[int] = set()
    for c in sorted(cells):
        keep.update(rng.sample(cells[c], counts[c]))
    return ([e for i, e in enumerate(items) if i in keep],
            [e for i, e in enumerate(items) if i not in keep])


def mix_train(train: list[dict], ratio: float, seed: int) -> tuple[list[dict], list[dict], Mix]:
    """(mixed train, examples left out, the mix)."""
    real = [e for e in train if e["source"] == REAL]
    synthetic = [e for e in train if e["source"] != REAL]
    n_real, n_syn = mix_counts(len(real), len(synthetic), ratio)
    rng = random.Random(f"mix-{seed}-{ratio}")
    real_used, real_left = stratified_sample(real, n_real, rng)
    syn_used, syn_left = stratified_sample(synthetic, n_syn, rng)
    mixed = real_used + syn_used
    rng.shuffle(mixed)
    total = n_real + n_syn
    return mixed, real_left + syn_left, Mix(ratio, n_real / total if total else 0.0,
                                            len(real), len(synthetic), n_real, n_syn)
