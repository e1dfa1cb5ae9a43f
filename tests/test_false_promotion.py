"""benchmarks/false_promotion.py on synthetic vectors (the real ones take minutes to build)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.false_promotion import (RealPair, improve, main, null_pair, pair_from_results,  # noqa: E402
                                        simulate)
from evaluation.results import build_results, write_eval_results  # noqa: E402

CATS = ("identity", "tool_calling", "domain", "isolation", "jailbreak")


def synthetic(n_per_cat=20, tie_rate=0.3, sd=0.3, seed=0) -> RealPair:
    rng = np.random.default_rng(seed)
    cats = np.repeat(CATS, n_per_cat)
    a = rng.random(cats.size)
    b = np.clip(a + rng.normal(0, sd, cats.size), 0, 1)
    ties = rng.random(cats.size) < tie_rate
    b[ties] = a[ties]
    return RealPair(ids=[f"c{i}" for i in range(cats.size)], categories=cats, a=a, b=b)


def test_null_pairs_are_real_same_category_and_exchangeable():
    real = synthetic()
    rng = np.random.default_rng(1)
    pairs = {(x, y) for x, y in zip(real.a, real.b)} | {(y, x) for x, y in zip(real.a, real.b)}
    deltas, ties = [], []
    for _ in range(300):
        base, cand = null_pair(real, rng)
        for i in (0, 57, 99):
            assert (base[i], cand[i]) in pairs
            j = [k for k in range(real.n) if {real.a[k], real.b[k]} == {base[i], cand[i]}][0]
            assert real.categories[j] == real.categories[i]
        deltas.append(cand.mean() - base.mean())
        ties.append(np.mean(base == cand))
    assert abs(np.mean(deltas)) < 3 * np.std(deltas) / np.sqrt(len(deltas))
    assert np.mean(ties) == pytest.approx(real.tie_rate, abs=0.02)


def test_improve_raises_the_mean_by_exactly_size():
    rng = np.random.default_rng(2)
    cand = rng.random(50)
    up = improve(cand, 0.03, rng)
    assert up.mean() - cand.mean() == pytest.approx(0.03)
    assert np.all(up >= cand) and np.all(up <= 1.0)
    with pytest.raises(ValueError):
        improve(np.ones(10), 0.03, rng)


def test_statistical_gate_holds_false_promotions_down():
    real = synthetic(sd=0.5)
    report = simulate(real, trials=80, sizes=[0.1], seed=0, bootstrap_samples=400)
    rates = report["rates"]
    assert report["n_dev"] == 100 and report["tie_rate"] == pytest.approx(real.tie_rate)
    assert rates["plain +0.02"]["null"] > 0.15                 # the noise beats the margin often
    assert rates["statistical gate"]["null"] <= 0.08
    assert rates["statistical gate"]["null"] <= rates["bootstrap P >= 0.95"]["null"]
    assert rates["statistical gate"]["0.1"] >= 0.8              # a large real gain still passes


def test_cli_with_eval_json(tmp_path, capsys):
    real = synthetic(n_per_cat=6)
    paths = []
    for name, scores in (("a", real.a), ("b", real.b)):
        rows = [{"id": i, "agent": "yoda", "category": str(c), "split": "dev", "score": float(s),
                 "label": "WRONG", "latency_ms": 1.0, "output": "", "explanation": ""}
                for i, c, s in zip(real.ids, real.categories, scores)]
        path = tmp_path / f"{name}.json"
        write_eval_results(path, build_results(rows, ["yoda"], {}, 1.0))
        paths.append(str(path))
    out_json = tmp_path / "report.json"
    assert main(["--eval-json", paths[0], "--eval-json", paths[1], "--trials", "5",
                 "--bootstrap-samples", "200", "--out", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "| plain +0.02 |" in text and "| statistical gate |" in text and "30 dev cases" in text
    assert out_json.is_file()
    assert main(["--eval-json", paths[0]]) == 2
    assert "give two files or none" in capsys.readouterr().err


def test_pair_from_results_needs_shared_dev_cases():
    from common.errors import ConfigError
    with pytest.raises(ConfigError):
        pair_from_results({"cases": []}, {"cases": []})


# --- null nights and sequences (benchmarks/null_nights.py) --------------------------------

from benchmarks.false_promotion import night_rules  # noqa: E402
from benchmarks.null_nights import (Judge, NullSet, World, load_null, noise_rule, rule_config,  # noqa: E402
                                    simulate_nights)
from study.gate import judge  # noqa: E402


def synthetic_null(seeds=6, n_per_cat=12, sd=0.25, seed=0) -> NullSet:
    """Seeds of one 'config': a shared per-case difficulty plus each seed's own noise."""
    rng = np.random.default_rng(seed)
    cats = np.repeat(CATS, n_per_cat + 3)
    dev = np.tile(np.r_[np.ones(n_per_cat, bool), np.zeros(3, bool)], len(CATS))
    base = rng.random(cats.size)
    scores = np.clip(base + rng.normal(0, sd, (seeds, cats.size)), 0, 1)
    return NullSet(categories=cats, dev=dev, scores=scores, seeds=[str(i) for i in range(seeds)])


def test_block_adapters_take_each_category_from_one_real_seed():
    null = synthetic_null()
    world = World(null, np.random.default_rng(0))
    a = world.adapter()
    for c in world.cats:
        got = a.dev[world.categories == c]
        rows = [s for s in range(len(null.seeds)) if np.array_equal(null.scores[s, world.slots[c]], got)]
        assert rows, c                                   # one real seed's scores on that category
    whole = world.adapter(seeds=[2] * len(world.cats))
    assert whole.dev.mean() == pytest.approx(null.seed_dev_overall[2])


def test_rules_decide_as_judge_does():
    """The benchmark decides every rule from one verdict's statistics; the same decision as
    judge() under the GateConfig the night would run for that rule."""
    null = synthetic_null(sd=0.3)
    world = World(null, np.random.default_rng(3))
    j = Judge(world, 300)
    sd = null.seed_sd
    rules = [(noise_rule("bar", sd, 0.05, cat_floor=0.05), 0.05), (noise_rule("bar 1", sd, 0.2, looks=1, p_min=None), 0.2)]
    kept = set()
    for _ in range(25):
        base, cand = world.adapter(), world.adapter(gain=0.05)
        for rule, alpha in rules:
            looks = 4 if rule.name == "bar" else 1
            full = judge(world.summary(cand), world.summary(base), rule_config(rule, sd, alpha, looks, 300))
            assert rule.keeps(j(base, cand)) == full.kept
            kept.add(full.kept)
    assert kept == {True, False}                         # both outcomes were exercised


def test_night_simulation_orders_the_rules():
    null = synthetic_null(sd=0.35)
    rules = night_rules(null.seed_sd)
    report = simulate_nights(null, rules, sequences=12, sizes=[0.3], detections=12, seed=0, bootstrap_samples=200)
    r = report["rates"]
    plain, strict = r["plain +0.02"], r["noise bar alpha 0.01, 4 looks"]
    assert plain["night_rate"] > strict["night_rate"]
    assert plain["sequence_rate"] >= plain["night_rate"]   # ten nights promote at least as often as one
    assert strict["detect_0.3"] >= 0.8                     # a large real gain still passes the strictest bar
    assert r["statistical gate + replication"]["extra_trials_per_night"] >= 0
    assert report["block_sd"] == pytest.approx(report["seed_sd"], rel=0.5)


def test_cli_with_null_json(tmp_path, capsys):
    null = synthetic_null()
    cases = [{"id": f"c{i}", "agent": "yoda", "category": str(c), "split": "dev" if d else "holdout"}
             for i, (c, d) in enumerate(zip(null.categories, null.dev))]
    data = {"cases": cases, "seeds": {s: {"overall": 0.0, "holdout": None, "scores": null.scores[i].tolist()}
                                      for i, s in enumerate(null.seeds)}}
    path = tmp_path / "null.json"
    path.write_text(json.dumps(data))
    assert load_null(path).scores.shape == null.scores.shape
    assert main(["--null-json", str(path), "--sequences", "2", "--detections", "2", "--bootstrap-samples", "100"]) == 0
    out = capsys.readouterr().out
    assert "| noise bar alpha 0.05, 4 looks |" in out and "10-night sequences promoting" in out
    assert "the 30 ordered pairs of real seeds" in out
    assert main(["--null-json", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_subsampled_eval_keeps_per_category_dev_cases_and_all_holdout():
    null = synthetic_null(n_per_cat=12)
    small = null.subsample(4, np.random.default_rng(0))
    for c in CATS:
        assert int(np.sum(small.dev & (small.categories == c))) == 4
    assert int(np.sum(~small.dev)) == int(np.sum(~null.dev))
    assert small.scores.shape == (len(null.seeds), small.categories.size)


def test_cli_subsampled_evals(tmp_path, capsys):
    null = synthetic_null()
    cases = [{"id": f"c{i}", "agent": "yoda", "category": str(c), "split": "dev" if d else "holdout"}
             for i, (c, d) in enumerate(zip(null.categories, null.dev))]
    path = tmp_path / "null.json"
    path.write_text(json.dumps({"cases": cases, "seeds": {s: {"scores": null.scores[i].tolist()}
                                                          for i, s in enumerate(null.seeds)}}))
    assert main(["--null-json", str(path), "--subsample", "5", "--evals", "2", "--sequences", "2",
                 "--detections", "2", "--bootstrap-samples", "100"]) == 0
    out = capsys.readouterr().out
    assert "2 evals of 5 dev cases per category" in out and "the full eval's sd" in out
