"""Null nights and null sequences of nights, from the real null of benchmarks/null_seeds.py.

The dev set is the real one, fixed, as it is for a study (resampling its cases with
replacement would double-count some cases' noise: a resampled mean is ~1.4x as noisy as
the real one, and the gate's noise bar, measured on the real set, would look too low). An
*adapter of the measured config* is built by picking, for every category, one of the real
seeds and taking that seed's scores on the category's cases: any number of fresh
adapters, each as noisy as a real re-training within a category (where a seed's luck is
shared: a seed that learned to refuse flips several jailbreak cases at once), with 10
seeds and 5 categories giving 100,000 different adapters. How well this "category blocks" model keeps the real
per-adapter spread is printed beside it (`block_sd` against `seed_sd`), and a night of
five distinct whole real seeds is simulated as a check (`night_rate_seeds`).

- A null night: one baseline adapter and four candidate adapters of the same config,
  judged one after another as the night does (a promotion moves the baseline at once:
  the ratchet). Every promotion is false.
- A null sequence: ten such nights on one world, the baseline carried over (ratchet).
  Reported: the share of sequences that promoted anything, the promotions per sequence,
  and how far the baseline's dev score climbed with no real gain, against its held-out
  score (the split never used to choose).
- Detection: a baseline adapter and one candidate adapter whose drawn dev scores are
  raised by exactly +size (benchmarks/false_promotion.py's `improve`).

Each candidate-baseline pair is judged once by study.gate.judge (statistics only: no
margin, no P threshold, vetoes off) and every rule decides from that verdict's delta,
P(candidate > baseline) and per-category BH-adjusted P, with thresholds taken from
GateConfig.noise_bar, the same code the night runs; tests/test_false_promotion.py checks
that these decisions equal judge's own verdict under each rule's GateConfig.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from study.gate import GateConfig, judge
from study.stats import EPS

NO_VETOES = dict(jailbreak_floor=0.0, regression_cap=1.0)
LOOKS = 4           # candidates a night: autoresearch.toml [study] max_trials
NIGHTS = 10


@dataclass
class NullSet:
    """Per-case scores of several seeds of one config (benchmarks/null_seeds.py's JSON)."""
    categories: np.ndarray    # per case
    dev: np.ndarray           # bool, per case
    scores: np.ndarray        # seeds x cases
    seeds: list[str]

    @property
    def seed_dev_overall(self) -> np.ndarray:
        return self.scores[:, self.dev].mean(axis=1)

    @property
    def seed_sd(self) -> float:
        """The measured training-seed sd of the dev overall: the prior a gate carries."""
        return float(np.std(self.seed_dev_overall, ddof=1))

    def subsample(self, per_category: int, rng: np.random.Generator) -> "NullSet":
        """A smaller eval: per_category dev cases of every category drawn without replacement
        (the held-out cases kept). Its seeds' spread is that eval's own training-seed noise."""
        keep = ~self.dev
        for c in np.unique(self.categories[self.dev]):
            idx = np.flatnonzero(self.dev & (self.categories == c))
            keep[rng.choice(idx, size=min(per_category, idx.size), replace=False)] = True
        return NullSet(self.categories[keep], self.dev[keep], self.scores[:, keep], self.seeds)


def load_null(path: Path) -> NullSet:
    data = json.loads(Path(path).read_text())
    cases = data["cases"]
    seeds = sorted(data["seeds"], key=int)
    if len(seeds) < 2:
        raise ValueError(f"{path}: need at least 2 seeds, found {len(seeds)}")
    return NullSet(categories=np.array([c["category"] for c in cases]),
                   dev=np.array([c["split"] == "dev" for c in cases]),
                   scores=np.array([data["seeds"][s]["scores"] for s in seeds], dtype=float), seeds=seeds)


@dataclass(frozen=True)
class Adapter:
    key: tuple
    dev: np.ndarray          # scores on the world's drawn dev cases
    holdout: float           # held-out overall


class World:
    """The dev set; fresh adapters of the measured config on it, drawn with `rng`."""

    def __init__(self, null: NullSet, rng: np.random.Generator):
        self.null, self.rng = null, rng
        self.cats = sorted(set(null.categories[null.dev]))
        self.slots = {c: np.flatnonzero(null.dev & (null.categories == c)) for c in self.cats}
        self.hold = {c: np.flatnonzero(~null.dev & (null.categories == c)) for c in self.cats}
        self.categories = np.concatenate([np.repeat(c, self.slots[c].size) for c in self.cats])
        self.ids = [f"s{i}" for i in range(self.categories.size)]
        self._made = 0

    def adapter(self, seeds: Sequence[int] | None = None, gain: float = 0.0) -> Adapter:
        """Category blocks of random seeds (or the given seed per category), optionally raised by gain."""
        n = len(self.null.seeds)
        pick = list(seeds) if seeds is not None else list(self.rng.integers(0, n, len(self.cats)))
        dev = np.concatenate([self.null.scores[s, self.slots[c]] for s, c in zip(pick, self.cats)])
        hold = np.concatenate([self.null.scores[s, self.hold[c]] for s, c in zip(pick, self.cats)])
        if gain:
            from benchmarks.false_promotion import improve
            dev = improve(dev, gain, self.rng)
        self._made += 1
        return Adapter(key=(self._made,), dev=dev, holdout=float(hold.mean()) if hold.size else math.nan)

    def summary(self, a: Adapter) -> dict[str, Any]:
        per_cat = {c: float(a.dev[self.categories == c].mean()) for c in self.cats}
        cases = [{"id": i, "category": c, "split": "dev", "score": float(s)}
                 for i, c, s in zip(self.ids, self.categories, a.dev)]
        return {"overall": float(a.dev.mean()), "per_category": per_cat, "per_agent": {}, "cases": cases}


@dataclass(frozen=True)
class Rule:
    name: str
    margin: float
    p_min: float | None = None
    cat_floor: float | None = None
    replicate: bool = False      # the kept candidate's config is re-trained with another seed and must clear again

    def keeps(self, v) -> bool:
        if v.delta < self.margin - EPS:
            return False
        if self.p_min is not None and (v.p_better is None or v.p_better < self.p_min - EPS):
            return False
        return self.cat_floor is None or all(st["p_adjusted"] >= self.cat_floor - EPS
                                             for st in v.per_category.values())


def noise_rule(name: str, sd: float, alpha: float, looks: int = LOOKS, margin: float = 0.02,
               p_min: float | None = 0.95, cat_floor: float | None = None) -> Rule:
    """The gate's noise bar as a Rule: thresholds from GateConfig.noise_bar itself."""
    b = GateConfig(margin=margin, alpha=alpha, noise_sd=sd, looks=looks, require_p=p_min,
                   category_p_floor=cat_floor, **NO_VETOES).noise_bar()
    return Rule(name, b.required_delta, b.required_p, cat_floor)


def rule_config(rule: Rule, sd: float, alpha: float | None, looks: int, bootstrap_samples: int) -> GateConfig:
    """The GateConfig a night would run for `rule` (to check the Rule against judge itself)."""
    if alpha is None:
        return GateConfig(margin=rule.margin, require_p=rule.p_min, category_p_floor=rule.cat_floor,
                          bootstrap_samples=bootstrap_samples, **NO_VETOES)
    return GateConfig(margin=0.02, alpha=alpha, noise_sd=sd, looks=looks, require_p=rule.p_min,
                      category_p_floor=rule.cat_floor, bootstrap_samples=bootstrap_samples, **NO_VETOES)


@dataclass
class Judge:
    """One judge() call per (baseline, candidate) pair of a world, shared by every rule."""
    world: World
    bootstrap_samples: int
    cache: dict = field(default_factory=dict)
    calls: int = 0

    def __call__(self, base: Adapter, cand: Adapter):
        k = (base.key, cand.key)
        if k not in self.cache:
            self.calls += 1
            cfg = GateConfig(margin=0.0, bootstrap_samples=self.bootstrap_samples, **NO_VETOES)
            self.cache[k] = judge(self.world.summary(cand), self.world.summary(base), cfg)
        return self.cache[k]


def _try(rule: Rule, j: Judge, base: Adapter, cand: Adapter, gain: float, cost: list[int]) -> bool:
    if not rule.keeps(j(base, cand)):
        return False
    if not rule.replicate:
        return True
    cost[0] += 1
    return rule.keeps(j(base, j.world.adapter(gain=gain)))


def run_sequence(rules: Sequence[Rule], world: World, j: Judge, nights: int, looks: int) -> dict[str, dict]:
    """Every rule's course through the same candidates: its own baseline, moved by its promotions."""
    first = world.adapter()
    nightly = [[world.adapter() for _ in range(looks)] for _ in range(nights)]
    out = {}
    for rule in rules:
        base, promoted, first_night, cost = first, 0, None, [0]
        for n, cands in enumerate(nightly):
            for cand in cands:
                if _try(rule, j, base, cand, 0.0, cost):
                    base, promoted = cand, promoted + 1
                    first_night = n if first_night is None else first_night
        out[rule.name] = {"promotions": promoted, "first_night": first_night, "extra_trials": cost[0],
                          "dev_climb": float(base.dev.mean() - first.dev.mean()),
                          "holdout_climb": base.holdout - first.holdout}
    return out


def simulate_nights(null: NullSet, rules: Sequence[Rule], sequences: int, sizes: Sequence[float],
                    detections: int, seed: int = 0, bootstrap_samples: int = 2000,
                    nights: int = NIGHTS, looks: int = LOOKS) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    names = [r.name for r in rules]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    seeds_night = {n: 0 for n in names}
    detect = {n: {s: 0 for s in sizes} for n in names}
    block_var = []      # within a world: the spread a gate faces on its one dev set
    calls = 0
    for _ in range(sequences):
        world = World(null, rng)
        j = Judge(world, bootstrap_samples)
        for name, r in run_sequence(rules, world, j, nights, looks).items():
            runs[name].append(r)
        block_var.append(np.var([world.adapter().dev.mean() for _ in range(8)], ddof=1))
        # A night of five distinct whole real seeds: the block model's check.
        if len(null.seeds) > looks:
            picks = rng.choice(len(null.seeds), size=looks + 1, replace=False)
            whole = [world.adapter(seeds=[p] * len(world.cats)) for p in picks]
            for rule in rules:
                base, cost, any_kept = whole[0], [0], False
                for cand in whole[1:]:
                    if _try(rule, j, base, cand, 0.0, cost):
                        base, any_kept = cand, True
                seeds_night[rule.name] += any_kept
        calls += j.calls
    for _ in range(detections):
        world = World(null, rng)
        j = Judge(world, bootstrap_samples)
        base = world.adapter()
        for size in sizes:
            cand = world.adapter(gain=size)
            for rule in rules:
                detect[rule.name][size] += _try(rule, j, base, cand, size, [0])
        calls += j.calls
    rates = {}
    for name in names:
        rs = runs[name]
        rates[name] = {
            "night_rate": float(np.mean([r["first_night"] == 0 for r in rs])),
            "night_rate_seeds": seeds_night[name] / sequences if len(null.seeds) > looks else math.nan,
            "sequence_rate": float(np.mean([r["promotions"] > 0 for r in rs])),
            "promotions_per_sequence": float(np.mean([r["promotions"] for r in rs])),
            "dev_climb": float(np.mean([r["dev_climb"] for r in rs])),
            "holdout_climb": float(np.nanmean([r["holdout_climb"] for r in rs])),
            "extra_trials_per_night": float(np.mean([r["extra_trials"] for r in rs])) / nights,
            **{f"detect_{s:g}": detect[name][s] / detections for s in sizes},
        }
    return {"sequences": sequences, "nights": nights, "looks": looks, "detections": detections,
            "seeds": len(null.seeds), "n_dev": int(null.dev.sum()), "seed_sd": null.seed_sd,
            "seed_overall": [float(x) for x in null.seed_dev_overall],
            "block_sd": float(np.sqrt(np.mean(block_var))), "judge_calls": calls,
            "rules": {r.name: {"margin": r.margin, "p_min": r.p_min, "cat_floor": r.cat_floor,
                               "replicate": r.replicate} for r in rules},
            "rates": rates}


def render_nights(report: dict[str, Any], sizes: Sequence[float]) -> str:
    lines = [f"{report['seeds']} seeds of one config, {report['n_dev']} dev cases: dev overall "
             + ", ".join(f"{x:.3f}" for x in report["seed_overall"])
             + f"; training-seed sd {report['seed_sd']:.4f} (category-block adapters: {report['block_sd']:.4f})",
             f"{report['sequences']} null sequences of {report['nights']} nights x {report['looks']} candidates "
             f"(ratchet), {report['detections']} detection draws per size; {report['judge_calls']} judge calls", "",
             "| rule | needs delta >= | P >= | null nights promoting (blocks / whole seeds) | "
             f"{report['nights']}-night sequences promoting | promotions per sequence | dev climb | holdout climb | "
             + " | ".join(f"detected at +{s:.2f}" for s in sizes) + " | extra trials a night |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(sizes) + "---|"]
    for name, r in report["rates"].items():
        rule = report["rules"][name]
        p = f"{rule['p_min']:.4f}" if rule["p_min"] is not None else "–"
        lines.append(f"| {name} | {rule['margin']:.3f} | {p} | {r['night_rate']:.1%} / {r['night_rate_seeds']:.1%} "
                     f"| {r['sequence_rate']:.1%} | {r['promotions_per_sequence']:.2f} | {r['dev_climb']:+.4f} "
                     f"| {r['holdout_climb']:+.4f} | "
                     + " | ".join(f"{r[f'detect_{s:g}']:.1%}" for s in sizes)
                     + f" | {r['extra_trials_per_night']:.2f} |")
    return "\n".join(lines)


def real_pairs(null: NullSet, bootstrap_samples: int = 2000) -> dict[str, Any]:
    """Every ordered pair of real seeds judged as candidate and baseline: how often the case
    bootstrap alone calls a seed of the same config better (it cannot see seed noise)."""
    world = World(null, np.random.default_rng(0))
    j = Judge(world, bootstrap_samples)
    n = len(null.seeds)
    whole = [world.adapter(seeds=[s] * len(world.cats)) for s in range(n)]
    verdicts = [j(whole[b], whole[c]) for b in range(n) for c in range(n) if b != c]
    return {"pairs": len(verdicts), "max_delta": max(v.delta for v in verdicts),
            "p_ge_095": sum(v.p_better >= 0.95 for v in verdicts) / len(verdicts),
            "max_p": max(v.p_better for v in verdicts),
            "delta_sd": float(np.std([v.delta for v in verdicts]))}


def pooled_report(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several evals' reports as one: rates averaged (equal shares of the sequences), the
    evals' own seed sds listed."""
    first = reports[0]
    out = {**first, "sequences": sum(r["sequences"] for r in reports),
           "detections": sum(r["detections"] for r in reports),
           "judge_calls": sum(r["judge_calls"] for r in reports),
           "seed_sd": float(np.mean([r["seed_sd"] for r in reports])),
           "block_sd": float(np.mean([r["block_sd"] for r in reports])),
           "eval_seed_sds": [r["seed_sd"] for r in reports],
           "rules": {k: {**v, "margin": float(np.mean([r["rules"][k]["margin"] for r in reports]))}
                     for k, v in first["rules"].items()}}
    names = list(first["rates"])
    out["rates"] = {n: {k: float(np.mean([r["rates"][n][k] for r in reports])) for k in first["rates"][n]}
                    for n in names}
    return out
