"""Exact and near-duplicate removal, with the clusters the splitter keeps together.

Exact: the same normalised text (system prompt included). Near: word-shingle Jaccard of
the non-system turns at or over `threshold`, found with datasketch's MinHash (affine32
scheme; signatures computed for the whole corpus at once with numpy, bit-identical to
`MinHash.update_batch`) and its MinHashLSH index, then confirmed on the exact shingle
sets, so a reported pair really is that similar. Only examples of the same agent are
compared: two agents giving the same refusal are two different lessons.

Greedy, in input order (real before synthetic): an example is dropped when it matches
one already kept, so no two kept examples are near duplicates. A cluster is a connected
component of the near-duplicate graph over every example, dropped ones included (A ~ D
and D ~ C put A and C in one cluster even when A and C are further apart), and the
splitter puts a whole cluster in one split.

The index is probabilistic: `lsh_params` tunes it to find >= 99% of the pairs exactly at
the threshold (at the default 0.8: 21 bands of 6 rows, missing 1 pair in 600 at 0.80 and
1 in 20,000 at 0.85). Its cost, about half the pipeline's, is in datasketch's insert.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .clean import group_key
from .shingles import Vocab, example_words, fold32, ngrams, stream

SCHEME = "affine32"
SEED = 1
# A missed duplicate is a leak, a false candidate only costs a (vectorised) check: the
# index finds at least this share of the pairs exactly at the threshold, more above it.
LSH_RECALL = 0.99
_CHUNK = 1 << 12  # shingles per numpy block: 4k x 128 uint32 = 2 MB, cache-sized (fastest)
_PREFILTER = 0.15  # candidates whose signature estimate is this far under are not checked


@dataclass(frozen=True)
class DedupeSettings:
    threshold: float = 0.8
    shingle_size: int = 3
    num_perm: int = 128


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser, as datasketch's affine32 scheme pre-mixes its input."""
    u = np.uint32
    h = h ^ (h >> u(16))
    h = h * u(0x85EBCA6B)
    h = h ^ (h >> u(13))
    h = h * u(0xC2B2AE35)
    return h ^ (h >> u(16))


def permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash  # lazy, as below: datasketch imports scipy (~2 s)

    a, b = MinHash(num_perm=num_perm, seed=SEED, scheme=SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(shingles32: np.ndarray, counts: np.ndarray, num_perm: int) -> np.ndarray:
    """One MinHash row per document (every count must be >= 1), uint32 [docs, num_perm]."""
    a, b = permutations(num_perm)
    hv = _fmix32(shingles32)
    ends = np.cumsum(counts)
    starts = ends - counts
    out = np.empty((len(counts), num_perm), dtype=np.uint32)
    d0 = 0
    while d0 < len(counts):
        d1 = max(int(np.searchsorted(ends, starts[d0] + _CHUNK, side="right")), d0 + 1)
        lo, hi = starts[d0], ends[d1 - 1]
        block = hv[lo:hi, None] * a[None, :] + b[None, :]  # uint32 wrap-around is the mod
        out[d0:d1] = np.minimum.reduceat(block, starts[d0:d1] - lo, axis=0)
        d0 = d1
    return out


def lsh_params(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) whose chance of
    making a pair at `threshold` share a band is >= recall."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def _context(example: dict) -> str:
    """Which examples may be compared: the same agent (or the same system prompt)."""
    if example["agent"] != "unknown":
        return example["agent"]
    system = next((m["content"] for m in example["messages"] if m["role"] == "system"), "")
    return "system:" + hashlib.sha256(system.encode()).hexdigest()


class _Clusters:
    """Union-find over example indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)  # the earliest member names the cluster


@dataclass
class Deduped:
    examples: list[dict]  # kept, each with "cluster"
    settings: DedupeSettings
    total: Counter = field(default_factory=Counter)  # by source, before
    exact: Counter = field(default_factory=Counter)  # removed, by source
    near: Counter = field(default_factory=Counter)
    clusters_with_duplicates: int = 0
    largest_cluster: int = 1

    @property
    def removed(self) -> int:
        return sum(self.exact.values()) + sum(self.near.values())

    def as_dict(self) -> dict:
        total = sum(self.total.values())
        by_source = {}
        for s in sorted(self.total):
            gone = self.exact[s] + self.near[s]
            by_source[s] = {"total": self.total[s], "exact": self.exact[s], "near": self.near[s],
                            "rate": round(gone / self.total[s], 4) if self.total[s] else 0.0}
        return {"threshold": self.settings.threshold, "shingle_size": self.settings.shingle_size,
                "num_perm": self.settings.num_perm, "total": total,
                "exact": sum(self.exact.values()), "near": sum(self.near.values()),
                "removed": self.removed, "rate": round(self.removed / total, 4) if total else 0.0,
                "by_source": by_source, "clusters_with_duplicates": self.clusters_with_duplicates,
                "largest_cluster": self.largest_cluster}


def _exact(examples: list[dict]) -> tuple[list[int], dict[int, int], list[str]]:
    """Indices of first occurrences, each repeat's first occurrence, and every key."""
    first: dict[str, int] = {}
    keep: list[int] = []
    repeat_of: dict[int, int] = {}
    keys = [group_key(ex) for ex in examples]
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        if j == i:
            keep.append(i)
        else:
            repeat_of[i] = j
    return keep, repeat_of, keys


class _Shingles:
    """Each document's distinct shingles, sorted, computed when first compared."""

    def __init__(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        self.hashes, self.ends = hashes, np.cumsum(counts)
        self.starts = self.ends - counts
        self._cache: dict[int, np.ndarray] = {}

    def of(self, d: int) -> np.ndarray:
        got = self._cache.get(d)
        if got is None:
            got = self._cache[d] = np.unique(self.hashes[self.starts[d]:self.ends[d]])
        return got

    def jaccard(self, d: int, e: int) -> float:
        x, y = self.of(d), self.of(e)
        inter = len(np.intersect1d(x, y, assume_unique=True))
        return inter / (len(x) + len(y) - inter)


def _index(docs: list[dict], sigs: np.ndarray, settings: DedupeSettings) -> list:
    """One datasketch MinHashLSH per agent, holding every doc (its key: the doc's index)."""
    from datasketch import LeanMinHash, MinHashLSH

    params = lsh_params(settings.threshold, settings.num_perm)
    indexes: dict[str, MinHashLSH] = {}
    for i, doc in enumerate(docs):
        ctx = _context(doc)
        lsh = indexes.get(ctx)
        if lsh is None:
            lsh = indexes[ctx] = MinHashLSH(num_perm=settings.num_perm, params=params)
        lsh.insert(i, LeanMinHash(seed=SEED, hashvalues=sigs[i], scheme=SCHEME),
                   check_duplication=False)
    return list(indexes.values())


def _candidates(indexes: list, n: int) -> list[list[int]]:
    """For each doc, the earlier docs sharing an LSH band with it. Read from the index's
    buckets (most hold one doc) instead of one query per doc: the same pairs, a fraction
    of the work."""
    earlier: list[set[int]] = [set() for _ in range(n)]
    for lsh in indexes:
        for table in lsh.hashtables:
            for key in table.keys():
                members = table.get(key)
                if len(members) > 1:
                    members = sorted(members)
                    for pos, i in enumerate(members[1:], start=1):
                        earlier[i].update(members[:pos])
    return [sorted(e) for e in earlier]


def near_matches(docs: list[dict], settings: DedupeSettings) -> tuple[list[bool], list[list[int]]]:
    """For each doc in order: kept or not, and the earlier docs (kept or not) it is a near
    duplicate of. A doc is dropped when one of those was kept.

    Every doc is indexed, dropped ones too: a later doc that only resembles a dropped one
    is kept, but joins its cluster (and so its split)."""
    vocab = Vocab()
    k = settings.shingle_size
    packed = stream((example_words(d, vocab) for d in docs), min_len=k)
    hashes, counts = ngrams(packed, k)
    sigs = signatures(fold32(hashes), counts, settings.num_perm)
    shingles = _Shingles(hashes, counts)
    floor = settings.threshold - _PREFILTER
    kept: list[bool] = []
    matches: list[list[int]] = []
    for i, cands in enumerate(_candidates(_index(docs, sigs, settings), len(docs))):
        hit: list[int] = []
        if cands:
            arr = np.asarray(cands, dtype=np.int64)
            estimate = (sigs[arr] == sigs[i]).mean(axis=1)
            hit = [int(c) for c in arr[estimate >= floor]
                   if shingles.jaccard(i, int(c)) >= settings.threshold]
        kept.append(not any(kept[j] for j in hit))
        matches.append(hit)
    return kept, matches


def dedupe(examples: list[dict], settings: DedupeSettings = DedupeSettings()) -> Deduped:
    """Drop exact then near duplicates; tag each kept example with its cluster id."""
    out = Deduped([], settings, total=Counter(e["source"] for e in examples))
    uniq, repeat_of, keys = _exact(examples)
    for i in repeat_of:
        out.exact[examples[i]["source"]] += 1
    docs = [examples[i] for i in uniq]
    kept, matches = near_matches(docs, settings) if docs else ([], [])
    clusters = _Clusters(len(docs))
    for i, hit in enumerate(matches):
        for j in hit:
            clusters.union(i, j)
        if not kept[i]:
            out.near[docs[i]["source"]] += 1
    sizes = Counter(clusters.find(i) for i in range(len(docs)))
    position = {j: p for p, j in enumerate(uniq)}
    for j in repeat_of.values():  # exact repeats count toward their cluster's size
        sizes[clusters.find(position[j])] += 1
    out.clusters_with_duplicates = sum(1 for n in sizes.values() if n > 1)
    out.largest_cluster = max(sizes.values(), default=1)
    for i, doc in enumerate(docs):
        if kept[i]:
            root = uniq[clusters.find(i)]  # its earliest member, always a kept one
            out.examples.append({**doc, "cluster": keys[root][:12]})
    return out
