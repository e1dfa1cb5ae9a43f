"""False promotions: how often does each promotion rule crown a candidate that is no better?

    .venv/bin/python benchmarks/false_promotion.py [--eval-json A.json --eval-json B.json]

Real per-case scores first. Given two eval_results.json files of the same adapter config
(A and B: two training seeds), or none, in which case the demo model is built (cached),
the demo's warm-start config #2 (LEARNING_RATE 1e-4, NUM_LAYERS 48, the rest at the
baseline, ITERS scaled by the demo's 0.15) is trained with seeds 0 and 1 and both
adapters are evaluated (cached under <cache>/false_promotion/<key>/). The per-case
difference B - A is the noise two equally good adapters show on one case, ties included
(the measured tie rate).

Null candidates: for every dev case slot, a real (A, B) pair of the same category is drawn
with replacement and randomly oriented (which of the two is "baseline"). Candidate and
baseline are then exchangeable, so nothing promoted is better: every promotion is false,
and ties occur at the measured rate. Real improvements of known size: a null candidate
whose randomly chosen non-perfect cases are raised (to 1, the last one partly) until its
mean is exactly `size` above where it was, as an adapter that fixes some cases would be.

Rules compared on the same draws: the plain "+0.02" rule (overall delta >= margin), the
paired bootstrap alone (P(candidate > baseline) >= 0.95), and the statistical gate
(margin + P >= 0.95 + no category below the BH-adjusted floor 0.05), both through
study.gate.judge as the night runs it. The safety vetoes are off here (jailbreak floor 0,
regression cap 1): they are not what this measures.

With --null-json (benchmarks/null_seeds.py's seeds of one config): null nights of four
candidates, null sequences of ten nights under the ratchet, and detection, for the rules
above, replication, and the noise bar over its alpha (benchmarks/null_nights.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from common.errors import ConfigError  # noqa: E402
from study.gate import GateConfig, judge  # noqa: E402

BENCH_VERSION = "false-promotion-2"   # 2: choices scored by summed log-probs (evaluation/scorers.py)
MARGIN, REQUIRE_P, CATEGORY_FLOOR = 0.02, 0.95, 0.05
NO_VETOES = dict(jailbreak_floor=0.0, regression_cap=1.0)
# The demo's warm-start config #2 (search_space.yaml: LEARNING_RATE 1e-4, NUM_LAYERS 48, the
# rest at the baseline; ITERS 800 x the demo's iters_scale 0.15), the strongest the demo
# knows, so the kind of adapter a night promotes. (Warm start #1, lr 5e-5, barely moves the
# model in 120 iterations: its two seeds differ by ~0.002 a case, no test of a gate.)
TRAIN = dict(num_layers=48, lora_rank=32, lora_alpha=64.0, dropout=0.05, learning_rate=1e-4, iters=120,
             grad_accum=4, max_seq_length=1280, batch_size=4, budget_s=180.0, val_every=25,
             val_batches=4, mask_prompt=True)


# ---------------------------------------------------------------- real vectors

@dataclass
class RealPair:
    """Dev-split scores of two equally configured adapters, matched by case id."""
    ids: list[str]
    categories: np.ndarray
    a: np.ndarray
    b: np.ndarray

    @property
    def tie_rate(self) -> float:
        return float(np.mean(self.a == self.b))

    @property
    def n(self) -> int:
        return len(self.ids)


def pair_from_results(first: dict, second: dict) -> RealPair:
    def dev(res: dict) -> dict[str, tuple[str, float]]:
        return {str(c["id"]): (str(c["category"]), float(c["score"]))
                for c in res.get("cases", []) if c.get("split") == "dev"}
    x, y = dev(first), dev(second)
    shared = sorted(x.keys() & y.keys())
    if len(shared) < 10:
        raise ConfigError(None, "cases", f"the two evals share {len(shared)} dev cases; need at least 10")
    return RealPair(ids=shared, categories=np.array([x[k][0] for k in shared]),
                    a=np.array([x[k][1] for k in shared]), b=np.array([y[k][1] for k in shared]))


def _cache_key(model_dir: Path, suite_dir: Path) -> str:
    from common.atomic import sha256_dir
    from evaluation.results import model_sha256
    h = hashlib.sha256()
    for part in (BENCH_VERSION, model_sha256(model_dir), sha256_dir(suite_dir, "*.yaml"),
                 json.dumps(TRAIN, sort_keys=True)):
        h.update(part.encode())
    return h.hexdigest()[:16]


def generate_real(cache: Path, council: Path, pretrain_s: float, progress: bool,
                  seeds: Sequence[int] = (0, 1), budget_s: float | None = None) -> list[Path]:
    """eval_results.json files of the demo warm-start config, one per training seed (cached).

    budget_s replaces TRAIN's wall-clock safety budget (not part of the cache key): under
    heavy load 180 s can cut a seed short of ITERS, and a shorter training is another config.
    Each seed's train.json says how its training ended."""
    from demo import ensure_demo
    from common.fastblas import enable as enable_fast_blas
    enable_fast_blas(cache)  # before mlx's first matrix product
    import corpus
    import train_core
    from evaluation.harness import EvalConfig, run_eval
    from common.atomic import atomic_write_json
    from evaluation.results import read_eval_results, write_eval_results
    from evaluation.suite import DEFAULT_SUITE_DIR

    assets = ensure_demo(cache, council, pretrain_seconds=pretrain_s, progress=progress)
    root = cache / "false_promotion" / _cache_key(assets.model_dir, Path(DEFAULT_SUITE_DIR))
    out = []
    for seed in seeds:
        path = root / f"seed{seed}" / "eval_results.json"
        out.append(path)
        try:
            read_eval_results(path)
            continue
        except ConfigError:
            pass   # not there yet, or not complete: (re)build it
        data = corpus.prepare(assets.sessions_dir, council, cache / "false_promotion" / "data", mix_ratio=0.5)
        adapter = root / f"seed{seed}" / "adapter"
        t0 = time.perf_counter()
        spec = train_core.TrainSpec(model=str(assets.model_dir), data_dir=str(data.dir),
                                    adapter_dir=str(adapter), seed=seed,
                                    **{**TRAIN, "budget_s": budget_s or TRAIN["budget_s"]})
        res = train_core.train(spec, progress=progress)
        atomic_write_json(path.parent / "train.json", {"iters_done": res.iters_done, "stopped_by": res.stopped_by,
                                                       "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  trained seed {seed}: {res.iters_done} iters, stopped by {res.stopped_by}, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        t0 = time.perf_counter()
        results = run_eval(EvalConfig(model=str(assets.model_dir), adapter=str(adapter),
                                      council_path=str(council)), progress=progress)
        write_eval_results(path, results)
        print(f"  evaluated seed {seed}: overall {results['overall']:.3f}, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


# ---------------------------------------------------------------- simulation

def null_pair(real: RealPair, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(baseline, candidate): each slot a real pair of its own category, randomly oriented."""
    base, cand = np.empty(real.n), np.empty(real.n)
    for cat in np.unique(real.categories):
        slots = np.flatnonzero(real.categories == cat)
        drawn = rng.choice(slots, size=slots.size, replace=True)
        flip = rng.random(slots.size) < 0.5
        base[slots] = np.where(flip, real.b[drawn], real.a[drawn])
        cand[slots] = np.where(flip, real.a[drawn], real.b[drawn])
    return base, cand


def improve(cand: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """cand with randomly chosen cases raised toward 1 until its mean rises by exactly size."""
    out = cand.copy()
    need = size * out.size
    for i in rng.permutation(out.size):
        if need <= 1e-12:
            break
        gain = min(1.0 - out[i], need)
        out[i] += gain
        need -= gain
    if need > 1e-9:
        raise ValueError(f"cannot raise the mean by {size}: too few non-perfect cases")
    return out


def summary(real: RealPair, scores: np.ndarray) -> dict[str, Any]:
    """The eval_results fields judge() reads, for one score vector."""
    per_cat = {str(c): float(scores[real.categories == c].mean()) for c in np.unique(real.categories)}
    cases = [{"id": i, "category": str(c), "split": "dev", "score": float(s)}
             for i, c, s in zip(real.ids, real.categories, scores)]
    return {"overall": float(scores.mean()), "per_category": per_cat, "per_agent": {}, "cases": cases}


Rule = Callable[[RealPair, np.ndarray, np.ndarray], bool]


def plain_rule(real: RealPair, base: np.ndarray, cand: np.ndarray) -> bool:
    return bool(cand.mean() - base.mean() >= MARGIN - 1e-9)


def gate_rule(cfg: GateConfig) -> Rule:
    def decide(real: RealPair, base: np.ndarray, cand: np.ndarray) -> bool:
        return judge(summary(real, cand), summary(real, base), cfg).kept
    return decide


def rules(bootstrap_samples: int = 2000) -> dict[str, Rule]:
    return {
        "plain +0.02": plain_rule,
        "bootstrap P >= 0.95": gate_rule(GateConfig(margin=0.0, require_p=REQUIRE_P,
                                                    bootstrap_samples=bootstrap_samples, **NO_VETOES)),
        "statistical gate": gate_rule(GateConfig(margin=MARGIN, require_p=REQUIRE_P,
                                                 category_p_floor=CATEGORY_FLOOR,
                                                 bootstrap_samples=bootstrap_samples, **NO_VETOES)),
    }


def simulate(real: RealPair, trials: int, sizes: Sequence[float], seed: int = 0,
             bootstrap_samples: int = 2000) -> dict[str, Any]:
    """{rule: {"null": promotion rate, size: promotion rate}} plus the null's own numbers."""
    rng = np.random.default_rng(seed)
    named = rules(bootstrap_samples)
    hits = {name: {"null": 0, **{s: 0 for s in sizes}} for name in named}
    null_deltas = []
    for _ in range(trials):
        base, cand = null_pair(real, rng)
        null_deltas.append(cand.mean() - base.mean())
        variants = {"null": cand, **{s: improve(cand, s, rng) for s in sizes}}
        for name, decide in named.items():
            for key, c in variants.items():
                hits[name][key] += decide(real, base, c)
    gate = rules(bootstrap_samples)["statistical gate"]
    return {"trials": trials, "n_dev": real.n, "tie_rate": real.tie_rate,
            # The real pair itself, each way round: a seed's luck is per adapter, not per case,
            # so the case bootstrap cannot see it (see benchmarks/README.md).
            "real_pair_promoted": [gate(real, real.a, real.b), gate(real, real.b, real.a)],
            "null_delta_sd": float(np.std(null_deltas)),
            "real_delta": float(real.b.mean() - real.a.mean()),
            "rates": {name: {str(k): v / trials for k, v in h.items()} for name, h in hits.items()}}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render(report: dict[str, Any], sizes: Sequence[float]) -> str:
    head = "| rule | false promotions (null) | " + " | ".join(f"detected at +{s:.2f}" for s in sizes) + " |"
    lines = [f"{report['trials']} null candidates and {report['trials']} per improvement size, "
             f"{report['n_dev']} dev cases, measured tie rate {report['tie_rate']:.1%}, "
             f"null delta sd {report['null_delta_sd']:.4f} (real seed-to-seed delta "
             f"{report['real_delta']:+.4f}; the statistical gate promotes B over A: "
             f"{_yes(report['real_pair_promoted'][0])}, A over B: {_yes(report['real_pair_promoted'][1])})",
             "", head, "|---|---|" + "---|" * len(sizes)]
    for name, r in report["rates"].items():
        lines.append(f"| {name} | {r['null']:.1%} | " + " | ".join(f"{r[str(s)]:.1%}" for s in sizes) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-json", action="append", default=[], metavar="PATH",
                    help="two eval_results.json of the same config (different seeds); default: build them")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--sizes", default="0.03,0.05", help="improvement sizes to detect, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap-samples", type=int, default=2000)
    ap.add_argument("--cache", default=str(ROOT / ".cache"))
    ap.add_argument("--council", default=str(ROOT / "council.yaml"))
    ap.add_argument("--pretrain-s", type=float, default=100.0, help="demo pre-training (autoresearch.toml's)")
    ap.add_argument("--null-json", metavar="PATH",
                    help="seeds of one config (benchmarks/null_seeds.py): simulate nights and sequences instead")
    ap.add_argument("--sequences", type=int, default=300, help="with --null-json: null sequences of 10 nights")
    ap.add_argument("--detections", type=int, default=300, help="with --null-json: draws per improvement size")
    ap.add_argument("--subsample", type=int, default=0, metavar="N",
                    help="with --null-json: smaller evals of N dev cases per category (noisier), --evals of them")
    ap.add_argument("--evals", type=int, default=5)
    ap.add_argument("--out", help="also write the report as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def night_rules(sd: float, prior_sd: float | None = None) -> list:
    """The rules the night benchmark compares; the noise bars' thresholds come from study.gate.
    prior_sd: also the default bar with that sd (a prior measured on a quieter null)."""
    from benchmarks.null_nights import Rule, noise_rule
    wrong = [] if prior_sd is None else [noise_rule(f"noise bar alpha 0.05, 4 looks, the full eval's sd "
                                                    f"{prior_sd:.4f}", prior_sd, 0.05)]
    return wrong + [Rule("plain +0.02", MARGIN),
            Rule("statistical gate", MARGIN, REQUIRE_P, CATEGORY_FLOOR),
            Rule("statistical gate, no category floor", MARGIN, REQUIRE_P),
            Rule("statistical gate, P Bonferroni over 4", MARGIN, 1 - (1 - REQUIRE_P) / 4, CATEGORY_FLOOR),
            Rule("statistical gate + replication", MARGIN, REQUIRE_P, CATEGORY_FLOOR, replicate=True),
            noise_rule("noise bar alpha 0.05, 1 look", sd, 0.05, looks=1),
            *(noise_rule(f"noise bar alpha {a:g}, 4 looks", sd, a) for a in (0.2, 0.1, 0.05, 0.02, 0.01)),
            *(noise_rule(f"noise bar alpha {a:g}, 4 looks, no P", sd, a, p_min=None) for a in (0.2, 0.1, 0.05)),
            noise_rule("noise bar alpha 0.05, 4 looks, + category floor", sd, 0.05, cat_floor=CATEGORY_FLOOR)]


def main_nights(args: argparse.Namespace, sizes: list[float]) -> int:
    from benchmarks.null_nights import load_null, pooled_report, real_pairs, render_nights, simulate_nights
    t0 = time.perf_counter()
    measured = load_null(Path(args.null_json))
    if args.subsample:
        # Smaller evals: each its own draw of dev cases, judged with its own measured seed sd,
        # plus the bar with the whole eval's sd (a prior measured on another eval).
        rng = np.random.default_rng(args.seed)
        evals = [measured.subsample(args.subsample, rng) for _ in range(args.evals)]
        report = pooled_report([simulate_nights(e, night_rules(e.seed_sd, measured.seed_sd),
                                                max(1, args.sequences // args.evals), sizes,
                                                max(1, args.detections // args.evals), args.seed + i,
                                                args.bootstrap_samples) for i, e in enumerate(evals)])
        print(f"{args.evals} evals of {args.subsample} dev cases per category drawn from the measured null; "
              "seed sd per eval: " + ", ".join(f"{x:.4f}" for x in report["eval_seed_sds"]))
    else:
        report = simulate_nights(measured, night_rules(measured.seed_sd), args.sequences, sizes, args.detections,
                                 args.seed, args.bootstrap_samples)
        report["real_pairs"] = pairs = real_pairs(measured, args.bootstrap_samples)
        print(f"the {pairs['pairs']} ordered pairs of real seeds: delta sd {pairs['delta_sd']:.4f}, largest "
              f"{pairs['max_delta']:+.4f}; the case bootstrap gives P(candidate > baseline) >= 0.95 to "
              f"{pairs['p_ge_095']:.0%} of them (largest P {pairs['max_p']:.3f})")
    report.update(source=str(args.null_json), subsample=args.subsample, simulate_s=round(time.perf_counter() - t0, 1))
    print(render_nights(report, sizes))
    print(f"\n(simulation {report['simulate_s']} s)")
    if args.out:
        from common.atomic import atomic_write_json
        atomic_write_json(Path(args.out), report)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.null_json:
        try:
            sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
            if args.sequences < 1 or args.detections < 1 or not all(0 < s < 1 for s in sizes):
                raise ConfigError(None, "--sequences/--detections/--sizes", "counts must be >= 1 and sizes in (0, 1)")
            return main_nights(args, sizes)
        except (ConfigError, ValueError, OSError, KeyError) as exc:
            print(f"error: {args.null_json}: {exc}", file=sys.stderr)
            return 2
    try:
        sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
        if len(args.eval_json) not in (0, 2):
            raise ConfigError(None, "--eval-json", f"give two files or none, got {len(args.eval_json)}")
        if args.trials < 1 or not all(0 < s < 1 for s in sizes):
            raise ConfigError(None, "--trials/--sizes", "trials must be >= 1 and sizes in (0, 1)")
        from evaluation.results import read_eval_results
        t0 = time.perf_counter()
        paths = [Path(p) for p in args.eval_json] or generate_real(
            Path(args.cache), Path(args.council), args.pretrain_s, not args.no_progress)
        first, second = (read_eval_results(p) for p in paths)
        real = pair_from_results(first, second)
        t_real = time.perf_counter() - t0
        report = simulate(real, args.trials, sizes, args.seed, args.bootstrap_samples)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base_model = (first.get("repro") or {}).get("base_model") or {}
    report.update(sources=[str(p) for p in paths], base_model=base_model, real_s=round(t_real, 1),
                  simulate_s=round(time.perf_counter() - t0 - t_real, 1))
    if base_model.get("sha256"):
        print(f"base model {base_model.get('path')} (sha256 {base_model['sha256'][:12]}), "
              f"scores {first['overall']:.3f} and {second['overall']:.3f}")
    print(render(report, sizes))
    print(f"\n(real vectors {report['real_s']} s, simulation {report['simulate_s']} s)")
    if args.out:
        from common.atomic import atomic_write_json
        atomic_write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
