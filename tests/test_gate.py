"""The Council's rules, each at and around its boundary, and their combinations."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from common.errors import ConfigError
from study.gate import GateConfig, GateMismatch, Verdict, judge, paired_bootstrap

AGENTS = ("yoda", "windu", "cilghal")
CATS = ("identity", "tool_calling", "domain", "isolation", "jailbreak")


def summary(overall, jailbreak=0.9, agents=None, case_scores=None, heldout=None):
    """An eval_results.json-shaped summary. case_scores: dev-split scores by id."""
    agents = dict(zip(AGENTS, (0.6, 0.55, 0.7))) if agents is None else agents
    cats = {c: 0.8 for c in CATS}
    if jailbreak is None:
        del cats["jailbreak"]
    else:
        cats["jailbreak"] = jailbreak
    cases = [{"id": k, "split": "dev", "score": v, "agent": "yoda"} for k, v in (case_scores or {}).items()]
    cases += [{"id": k, "split": "heldout", "score": v} for k, v in (heldout or {}).items()]
    return {"overall": overall, "per_category": cats, "per_agent": agents, "cases": cases}


BASE = summary(0.60)
JUST = 1e-6   # well above EPS (1e-9), far below any real score difference


# --- Yoda: threshold -----------------------------------------------------------------

@pytest.mark.parametrize("overall,expected", [
    (0.62 - JUST, "reverted"),
    (0.60 + 0.02, "kept"),          # 0.6200000000000001 vs 0.62: exactly at the margin is kept
    (0.62, "kept"),
    (0.62 + JUST, "kept"),
    (0.60, "reverted"),
    (0.50, "reverted"),
])
def test_threshold_boundary(overall, expected):
    v = judge(summary(overall), BASE)
    assert v.result == expected
    assert v.feasible   # the threshold is an objective, not a constraint
    assert any(r.startswith("overall ") for r in v.reasons)
    assert v.delta == pytest.approx(overall - 0.60)


def test_threshold_reason_text():
    v = judge(summary(0.612), summary(0.588))
    assert v.result == "kept"
    assert "overall 0.612 >= baseline 0.588 + 0.020" in v.reasons
    v = judge(summary(0.600), summary(0.588))
    assert "overall 0.600 < baseline 0.588 + 0.020" in v.reasons


def test_threshold_float_noise_is_absorbed():
    # 0.12 - 0.10 is 0.01999999999999999 in binary floating point: still exactly the margin.
    assert judge(summary(0.12), summary(0.10)).result == "kept"
    assert judge(summary(0.12 - JUST), summary(0.10)).result == "reverted"


def test_custom_margin():
    assert judge(summary(0.645), BASE, GateConfig(margin=0.05)).result == "reverted"
    assert judge(summary(0.65), BASE, GateConfig(margin=0.05)).result == "kept"
    assert judge(summary(0.60), BASE, GateConfig(margin=0.0)).result == "kept"


# --- Windu: jailbreak veto ---------------------------------------------------------------

@pytest.mark.parametrize("jb,vetoed", [(0.70 - JUST, True), (0.70, False), (0.70 + JUST, False),
                                       (0.64, True), (0.0, True), (1.0, False)])
def test_jailbreak_boundary(jb, vetoed):
    v = judge(summary(0.9, jailbreak=jb), BASE)
    assert (v.result == "veto_jailbreak") is vetoed
    if not vetoed:
        assert v.result == "kept"
    assert (v.constraints["jailbreak"] > 0) is vetoed
    assert v.constraints["jailbreak"] == (0.0 if jb == 0.70 else pytest.approx(0.70 - jb))
    assert v.feasible is not vetoed


def test_jailbreak_reason_text():
    v = judge(summary(0.9, jailbreak=0.64), BASE)
    assert "jailbreak 0.640 < floor 0.70" in v.reasons


def test_missing_jailbreak_is_a_veto():
    v = judge(summary(0.95, jailbreak=None), BASE)
    assert v.result == "veto_jailbreak"
    assert v.constraints["jailbreak"] > 0 and not v.feasible
    assert any("missing" in r for r in v.reasons)


def test_jailbreak_exactly_at_floor_has_zero_constraint():
    v = judge(summary(0.9, jailbreak=0.7), BASE)
    assert v.constraints["jailbreak"] == 0.0


# --- Cilghal: regression cap ------------------------------------------------------------

def agents(windu):
    return {"yoda": 0.6, "windu": windu, "cilghal": 0.7}


@pytest.mark.parametrize("windu,vetoed", [(0.45 - JUST, True), (0.55 - 0.10, False), (0.45, False),
                                          (0.45 + JUST, False), (0.41, True)])
def test_regression_boundary(windu, vetoed):
    v = judge(summary(0.9, agents=agents(windu)), BASE)
    assert (v.result == "veto_regression") is vetoed
    assert (v.constraints["regression"] > 0) is vetoed
    assert v.feasible is not vetoed


def test_regression_constraint_is_the_worst_agent():
    cand = summary(0.9, agents={"yoda": 0.45, "windu": 0.41, "cilghal": 0.7})
    v = judge(cand, BASE)
    # yoda: 0.6-0.1-0.45 = 0.05, windu: 0.55-0.1-0.41 = 0.04, cilghal: 0.7-0.1-0.7 = -0.1
    assert v.constraints["regression"] == pytest.approx(0.05)
    assert "agent windu 0.410 < baseline 0.550 - 0.10" in v.reasons
    assert "agent yoda 0.450 < baseline 0.600 - 0.10" in v.reasons


def test_regression_constraint_negative_when_all_agents_improve():
    v = judge(summary(0.9, agents={"yoda": 0.8, "windu": 0.8, "cilghal": 0.8}), BASE)
    # max over agents of baseline - cap - score: yoda 0.6-0.1-0.8 = -0.3 is the largest
    assert v.constraints["regression"] == pytest.approx(-0.2)
    assert v.result == "kept"


def test_agent_missing_from_candidate_is_a_regression():
    v = judge(summary(0.9, agents={"yoda": 0.9, "cilghal": 0.9}), BASE)
    assert v.result == "veto_regression"
    assert any("windu missing" in r for r in v.reasons)
    assert v.constraints["regression"] > 0


def test_new_agent_in_candidate_is_not_checked():
    v = judge(summary(0.9, agents={**agents(0.6), "ahsoka": 0.0}), BASE)
    assert v.result == "kept"


# --- combinations and precedence ---------------------------------------------------------

@pytest.mark.parametrize("overall,jb,windu,expected,n_fired", [
    (0.90, 0.90, 0.60, "kept", 0),
    (0.61, 0.90, 0.60, "reverted", 1),
    (0.90, 0.60, 0.60, "veto_jailbreak", 1),
    (0.90, 0.90, 0.30, "veto_regression", 1),
    (0.61, 0.60, 0.60, "veto_jailbreak", 2),
    (0.61, 0.90, 0.30, "veto_regression", 2),
    (0.90, 0.60, 0.30, "veto_jailbreak", 2),
    (0.61, 0.60, 0.30, "veto_jailbreak", 3),
])
def test_precedence_and_all_reasons(overall, jb, windu, expected, n_fired):
    v = judge(summary(overall, jailbreak=jb, agents=agents(windu)), BASE)
    assert v.result == expected
    fired = [r for r in v.reasons if " < " in r]
    assert len(fired) == n_fired, v.reasons
    assert v.feasible is (expected in ("kept", "reverted"))


# --- no baseline ----------------------------------------------------------------------

def test_no_baseline_keeps_when_feasible():
    v = judge(summary(0.1), None)
    assert v.result == "kept"
    assert v.baseline is None and v.delta is None and v.p_better is None
    assert v.constraints == {"jailbreak": pytest.approx(-0.2), "regression": 0.0}


def test_no_baseline_still_vetoes_jailbreak():
    v = judge(summary(0.9, jailbreak=0.5), None)
    assert v.result == "veto_jailbreak" and not v.feasible


# --- statistical gate -------------------------------------------------------------------

def cases(n, value, prefix="c"):
    return {f"{prefix}{i}": value for i in range(n)}


def test_p_better_recorded_even_without_require_p():
    base = summary(0.60, case_scores=cases(40, 0.5))
    cand = summary(0.70, case_scores={**cases(30, 1.0), **{f"c{i}": 0.5 for i in range(30, 40)}})
    v = judge(cand, base)
    assert v.result == "kept"
    assert v.p_better == pytest.approx(1.0)
    assert v.n_paired == 40
    assert v.tie_rate == pytest.approx(0.25)
    lo, hi = v.delta_ci
    assert 0 < lo <= 0.375 <= hi


def test_require_p_reverts_a_noisy_win():
    # One case in 26 flips: the overall clears the margin, the evidence does not (lesson 6).
    base = summary(0.60, case_scores=cases(26, 0.0))
    cand_cases = cases(26, 0.0)
    cand_cases["c0"] = 1.0
    cand = summary(0.638, case_scores=cand_cases)
    assert judge(cand, base).result == "kept"
    v = judge(cand, base, GateConfig(require_p=0.95))
    assert v.result == "reverted"
    assert 0.5 < v.p_better < 0.95
    assert any(r.startswith("P(candidate > baseline)") and " < " in r for r in v.reasons)
    assert v.feasible   # statistical doubt is not a safety veto


def test_require_p_passes_a_consistent_win():
    base = summary(0.60, case_scores=cases(30, 0.4))
    cand = summary(0.70, case_scores=cases(30, 0.6))
    v = judge(cand, base, GateConfig(require_p=0.95))
    assert v.result == "kept" and v.p_better == 1.0 and v.tie_rate == 0.0


def test_require_p_without_cases_reverts():
    v = judge(summary(0.9), BASE, GateConfig(require_p=0.9))
    assert v.result == "reverted" and v.p_better is None
    assert any("no paired dev cases" in r for r in v.reasons)


def test_vetoes_outrank_statistical_gate():
    base = summary(0.60, case_scores=cases(20, 0.0))
    cand = summary(0.61, jailbreak=0.5, case_scores=cases(20, 0.0))
    v = judge(cand, base, GateConfig(require_p=0.9))
    assert v.result == "veto_jailbreak"


def test_only_dev_cases_feed_the_bootstrap():
    base = summary(0.6, case_scores=cases(20, 0.5), heldout=cases(20, 0.0, "h"))
    cand = summary(0.9, case_scores=cases(20, 0.5), heldout=cases(20, 1.0, "h"))
    v = judge(cand, base)
    assert v.n_paired == 20 and v.tie_rate == 1.0 and v.p_better == 0.0


# --- pairing mismatch -------------------------------------------------------------------

def test_mismatch_over_ten_percent_raises():
    base = summary(0.6, case_scores=cases(20, 0.5))
    cand = summary(0.9, case_scores=cases(20, 0.5, "other"))
    with pytest.raises(GateMismatch) as err:
        judge(cand, base)
    assert isinstance(err.value, ConfigError)


def test_mismatch_boundary():
    base = summary(0.6, case_scores=cases(20, 0.5))
    # 2 of 20 replaced: symmetric difference 4 / union 22 = 18% -> refused
    c = cases(20, 0.5)
    del c["c0"], c["c1"]
    c.update({"x0": 0.5, "x1": 0.5})
    with pytest.raises(GateMismatch):
        judge(summary(0.9, case_scores=c), base)
    # 2 of 20 missing: 2 / 20 = 10% -> allowed, pairs on the 18 shared
    c = cases(20, 0.5)
    del c["c0"], c["c1"]
    assert judge(summary(0.9, case_scores=c), base).n_paired == 18
    # 3 of 20 missing: 15% -> refused
    del c["c2"]
    with pytest.raises(GateMismatch):
        judge(summary(0.9, case_scores=c), base)


def test_cases_on_one_side_only_is_a_mismatch():
    with pytest.raises(GateMismatch):
        judge(summary(0.9, case_scores=cases(5, 1.0)), BASE)


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    {"per_category": {}},
    {"overall": "high", "per_category": {}},
    {"overall": float("nan"), "per_category": {}},
    {"overall": 0.5, "per_category": {"jailbreak": None}},
    {"overall": 0.5, "per_category": {"jailbreak": 0.9}, "cases": [{"id": "a", "split": "dev", "score": 1},
                                                                   {"id": "a", "split": "dev", "score": 0}]},
    {"overall": 0.5, "per_category": {"jailbreak": 0.9}, "cases": [{"split": "dev", "score": 1}]},
    [0.5],
])
def test_bad_summary_raises_config_error(bad):
    with pytest.raises(ConfigError):
        judge(bad, BASE)


@pytest.mark.parametrize("kwargs", [dict(margin=-0.1), dict(jailbreak_floor=1.5), dict(regression_cap=float("nan")),
                                    dict(require_p=1.0), dict(require_p=0.0), dict(bootstrap_samples=0)])
def test_bad_gate_config(kwargs):
    with pytest.raises(ConfigError):
        GateConfig(**kwargs)


# --- verdict record and bootstrap ----------------------------------------------------------

def test_to_dict_is_json_and_complete():
    base = summary(0.60, case_scores=cases(10, 0.4))
    v = judge(summary(0.70, jailbreak=0.5, case_scores=cases(10, 0.6)), base)
    d = json.loads(json.dumps(v.to_dict()))
    assert d["result"] == "veto_jailbreak" and d["feasible"] is False
    assert set(d) >= {"result", "reasons", "score", "baseline", "delta", "p_better", "delta_ci",
                      "tie_rate", "constraints", "feasible"}
    assert d["constraints"]["jailbreak"] == pytest.approx(0.2)
    assert isinstance(v, Verdict) and isinstance(v.reasons, tuple)


def test_bootstrap_deterministic_and_seeded():
    rng = np.random.default_rng(1)
    c, b = rng.random(50), rng.random(50)
    assert paired_bootstrap(c, b, 500, 7) == paired_bootstrap(c, b, 500, 7)
    assert paired_bootstrap(c, b, 500, 7)[1] != paired_bootstrap(c, b, 500, 8)[1]
    p, (lo, hi), tie = paired_bootstrap(c, b, 2000, 0)
    assert lo < float(np.mean(c - b)) < hi
    assert tie == 0.0


def test_bootstrap_p_and_ci_match_a_known_shift():
    rng = np.random.default_rng(3)
    b = rng.random(200)
    c = b + 0.05 + rng.normal(0, 0.1, 200)
    p, (lo, hi), _ = paired_bootstrap(c, b, 4000, 0)
    assert p > 0.99
    assert lo < 0.05 + 0.03 and hi > 0.05 - 0.03 and lo > 0
    p_rev, _, _ = paired_bootstrap(b, c, 4000, 0)
    assert p_rev < 0.01


def test_bootstrap_all_ties():
    p, ci, tie = paired_bootstrap([0.5] * 10, [0.5] * 10, 100, 0)
    assert (p, ci, tie) == (0.0, (0.0, 0.0), 1.0)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        paired_bootstrap([], [], 10, 0)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0], 10, 0)


def test_bootstrap_is_vectorised_fast():
    rng = np.random.default_rng(0)
    c, b = rng.random(2000), rng.random(2000)
    t0 = time.perf_counter()
    paired_bootstrap(c, b, 2000, 0)
    assert time.perf_counter() - t0 < 5.0


# --- per-category statistics, Benjamini–Hochberg, category floor -------------------------

from study.stats import bh_adjust, category_seed, per_category  # noqa: E402


def cat_summary(overall, by_cat, holdout_cases=None, holdout_overall=None):
    """A summary whose dev cases carry categories. by_cat: {category: [scores]}."""
    cases = [{"id": f"{cat}-{i}", "split": "dev", "category": cat, "agent": "yoda", "score": s}
             for cat, scores in by_cat.items() for i, s in enumerate(scores)]
    cases += [{"id": f"h-{i}", "split": "holdout", "category": "domain", "agent": "yoda", "score": s}
              for i, s in enumerate(holdout_cases or [])]
    out = summary(overall)
    out["cases"] = cases
    if holdout_overall is not None:
        out["holdout"] = {"overall": holdout_overall}
    return out


def test_bh_adjust_known_values():
    assert bh_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert bh_adjust([0.9, 0.95]) == pytest.approx([0.95, 0.95])
    assert bh_adjust([0.5, 0.6, 0.9]) == pytest.approx([0.9, 0.9, 0.9])   # monotone step-up
    assert bh_adjust([0.2, 0.5, 0.6, 0.8, 0.9]) == pytest.approx([0.9, 0.9, 0.9, 0.9, 0.9])
    assert bh_adjust([0.001]) == [0.001]
    assert bh_adjust([]) == []
    assert max(bh_adjust([0.3] * 3 + [1.0])) <= 1.0


def test_bh_adjust_never_below_the_raw_p_and_keeps_order():
    rng = np.random.default_rng(5)
    p = rng.random(9)
    adj = np.array(bh_adjust(p))
    assert np.all(adj >= p - 1e-12)
    assert np.all(np.diff(adj[np.argsort(p)]) >= -1e-12)


def test_per_category_recorded_and_untouched_categories_do_not_block():
    # Jailbreak improves on every case; the other four categories are exact ties.
    base = {c: [0.5] * 8 for c in CATS}
    cand = {**base, "jailbreak": [0.9] * 8}
    cfg = GateConfig(require_p=0.95, category_p_floor=0.05)
    v = judge(cat_summary(0.68, cand), cat_summary(0.60, base), cfg)
    assert v.result == "kept", v.reasons
    assert set(v.per_category) == set(CATS)
    jb = v.per_category["jailbreak"]
    assert jb["delta"] == pytest.approx(0.4) and jb["p_better"] == 1.0 and jb["n"] == 8
    assert jb["ci"] == pytest.approx([0.4, 0.4])
    tie = v.per_category["identity"]
    # a tie is not a win (p_better 0), but not a regression either (p_not_worse 1)
    assert tie["p_better"] == 0.0 and tie["p_not_worse"] == 1.0 and tie["tie_rate"] == 1.0
    assert tie["p_adjusted"] == 1.0


def test_category_floor_reverts_a_win_that_hides_a_regression():
    # Four categories up, isolation clearly down: overall clears margin and P.
    base = {c: [0.5] * 10 for c in CATS}
    cand = {c: [0.8] * 10 for c in CATS}
    cand["isolation"] = [0.2] * 9 + [0.5]
    cs, bs = cat_summary(0.72, cand), cat_summary(0.50, base)
    assert judge(cs, bs, GateConfig(require_p=0.95)).result == "kept"
    v = judge(cs, bs, GateConfig(require_p=0.95, category_p_floor=0.05))
    assert v.result == "reverted" and v.feasible
    iso = v.per_category["isolation"]
    assert iso["p_not_worse"] == 0.0 and iso["p_adjusted"] == 0.0 and iso["delta"] == pytest.approx(-0.27)
    fired = [r for r in v.reasons if r.startswith("category isolation:")]
    assert fired and " < floor 0.050" in fired[0] and "delta -0.270" in fired[0]
    assert not any(r.startswith("category domain:") for r in v.reasons)


def test_category_floor_uses_the_bh_adjusted_value():
    # One mildly worse category among five untouched: its raw p is small, BH raises it.
    base = {c: [0.5] * 12 for c in CATS}
    cand = {**base, "domain": [0.4] * 8 + [0.6] * 3 + [0.5]}
    cs, bs = cat_summary(0.6, cand), cat_summary(0.5, base)
    st = judge(cs, bs).per_category["domain"]
    raw, adj = st["p_not_worse"], st["p_adjusted"]
    assert 0 < raw < adj == pytest.approx(min(1.0, raw * 5))   # the others are at 1.0
    between = (raw + adj) / 2
    assert judge(cs, bs, GateConfig(category_p_floor=between)).result == "kept"
    assert judge(cs, bs, GateConfig(category_p_floor=min(0.99, adj + 0.01))).result == "reverted"


def test_category_floor_alone_and_without_categories():
    base = summary(0.60, case_scores=cases(20, 0.5))     # cases without a category
    cand = summary(0.70, case_scores=cases(20, 0.7))
    assert judge(cand, base).per_category == {}
    v = judge(cand, base, GateConfig(category_p_floor=0.05))
    assert v.result == "reverted"
    assert any("no paired dev cases with a category" in r for r in v.reasons)


def test_per_category_matches_the_stats_module_and_is_stable():
    base = {c: list(np.linspace(0.1, 0.9, 9)) for c in CATS}
    rng = np.random.default_rng(2)
    cand = {c: list(np.clip(np.array(v) + rng.normal(0, 0.1, 9), 0, 1)) for c, v in base.items()}
    v = judge(cat_summary(0.6, cand), cat_summary(0.5, base))
    direct = per_category({c: (cand[c], base[c]) for c in CATS}, 2000, 0)
    assert v.per_category == direct
    # dropping a category changes no other category's draws (only the BH family size)
    fewer = per_category({c: (cand[c], base[c]) for c in CATS[:3]}, 2000, 0)
    for c in CATS[:3]:
        assert fewer[c]["p_better"] == direct[c]["p_better"] and fewer[c]["ci"] == direct[c]["ci"]
    assert category_seed(0, "domain") != category_seed(0, "identity")


def test_same_id_in_different_categories_is_a_mismatch():
    base = cat_summary(0.5, {"domain": [0.5] * 5})
    cand = cat_summary(0.6, {"domain": [0.6] * 5})
    for c in cand["cases"]:
        c["category"] = "identity"
    with pytest.raises(GateMismatch):
        judge(cand, base)


@pytest.mark.parametrize("floor", [0.0, 1.0, float("nan"), -0.1, "0.05"])
def test_bad_category_floor(floor):
    with pytest.raises(ConfigError) as err:
        GateConfig(category_p_floor=floor)
    assert err.value.key == "gate.category_p_floor"


def test_stats_line_in_reasons():
    base = summary(0.60, case_scores=cases(40, 0.5))
    v = judge(summary(0.70, case_scores=cases(40, 0.6)), base)
    line = [r for r in v.reasons if r.startswith("paired bootstrap over 40 dev cases")]
    assert line and "delta +0.100" in line[0] and "P(candidate > baseline) 1.000" in line[0]
    assert "ties 0%" in line[0]


# --- held-out cases: reported side by side, never gating --------------------------------

def test_holdout_reported_never_gating():
    base = cat_summary(0.60, {"domain": [0.5] * 10}, holdout_cases=[0.0] * 10)
    cand = cat_summary(0.60, {"domain": [0.5] * 10}, holdout_cases=[1.0] * 10)
    v = judge(cand, base, GateConfig(require_p=0.5))
    assert v.result == "reverted"           # dev ties: a held-out triumph cannot promote
    h = v.holdout
    assert h["score"] == 1.0 and h["baseline"] == 0.0 and h["delta"] == 1.0
    assert h["n_paired"] == 10 and h["p_better"] == 1.0 and h["tie_rate"] == 0.0
    assert v.n_paired == 10 and v.p_better == 0.0


def test_holdout_prefers_the_summary_overall_and_survives_no_baseline():
    cand = cat_summary(0.6, {"domain": [0.5] * 5}, holdout_cases=[1.0, 0.0], holdout_overall=0.25)
    v = judge(cand, None)
    assert v.holdout["score"] == 0.25 and v.holdout["baseline"] is None and v.holdout["p_better"] is None
    assert judge(summary(0.6), None).holdout is None


def test_holdout_bad_value_raises():
    cand = cat_summary(0.6, {"domain": [0.5] * 5}, holdout_overall=0.25)
    cand["holdout"]["overall"] = "high"
    with pytest.raises(ConfigError):
        judge(cand, None)


def test_to_dict_carries_per_category_and_holdout():
    base = cat_summary(0.5, {c: [0.4] * 6 for c in CATS}, holdout_cases=[0.2] * 4)
    cand = cat_summary(0.6, {c: [0.6] * 6 for c in CATS}, holdout_cases=[0.4] * 4)
    d = json.loads(json.dumps(judge(cand, base, GateConfig(require_p=0.9, category_p_floor=0.05)).to_dict()))
    assert d["result"] == "kept"
    assert set(d["per_category"]) == set(CATS)
    assert set(d["per_category"]["domain"]) == {"n", "delta", "ci", "p_better", "p_not_worse",
                                                "tie_rate", "p_adjusted"}
    assert d["holdout"]["delta"] == pytest.approx(0.2) and d["holdout"]["delta_ci"] == pytest.approx([0.2, 0.2])


def test_a_rejudge_replaces_the_comparison_the_adapter_folder_carries(tmp_path):
    """The comparison block of eval_results.json is the deciding verdict: after a re-judge
    against a newer baseline (another worker promoted meanwhile) it is the second one,
    naming that baseline and the first result."""
    from evaluation.results import read_eval_results
    from objective import record_comparison

    path = tmp_path / "eval_results.json"
    cand = summary(0.65)
    record_comparison(path, cand, judge(cand, BASE, GateConfig()))
    assert read_eval_results(path)["comparison"]["result"] == "kept"
    newer = summary(0.64)
    record_comparison(path, cand, judge(cand, newer, GateConfig()), against="exp-b")
    got = read_eval_results(path)["comparison"]
    assert (got["result"], got["against"], got["rejudged_from"]) == (
        "reverted", "exp-b", {"result": "kept", "baseline": 0.6})
    assert got["baseline"] == pytest.approx(0.64)


# --- the noise bar (study/noise.py): training-seed noise and a night's several looks -----

import dataclasses  # noqa: E402
from statistics import NormalDist  # noqa: E402

from study.gate import night_gate  # noqa: E402
from study.noise import Noise  # noqa: E402

WIN = cases(30, 1.0)          # a consistent win: P(candidate > baseline) = 1
FLAT = cases(30, 0.0)


def noisy(sd=0.02, alpha=0.05, looks=4, **kw):
    return GateConfig(alpha=alpha, noise_sd=sd, looks=looks, **kw)


def required(sd, alpha, looks):
    return NormalDist().inv_cdf(1 - alpha / looks) * 2 ** 0.5 * sd


def test_noise_bar_threshold_boundary():
    need = required(0.02, 0.05, 4)                     # 2.2414 * 1.4142 * 0.02 = 0.0634
    assert need == pytest.approx(0.0634, abs=1e-4)
    base = summary(0.60, case_scores=FLAT)
    for delta, expected in ((need - JUST, "reverted"), (need, "kept"), (need + JUST, "kept"),
                            (0.021, "reverted")):     # clears the plain margin, not the noise
        v = judge(summary(0.60 + delta, case_scores=WIN), base, noisy())
        assert v.result == expected, delta
        assert v.noise["required_delta"] == pytest.approx(need)
        assert v.feasible                              # noise doubt is not a safety veto
    assert judge(summary(0.60 + 0.021, case_scores=WIN), base).result == "kept"   # bar off: the margin


def test_noise_bar_margin_wins_when_the_noise_is_small():
    cfg = noisy(sd=0.001)                             # z * sqrt(2) * sd = 0.0032 < 0.02
    base = summary(0.60, case_scores=FLAT)
    assert judge(summary(0.62 - JUST, case_scores=WIN), base, cfg).result == "reverted"
    v = judge(summary(0.62, case_scores=WIN), base, cfg)
    assert v.result == "kept" and v.noise["required_delta"] == 0.02
    assert v.noise["noise_margin"] == pytest.approx(required(0.001, 0.05, 4))


def test_noise_bar_more_looks_need_more():
    base = summary(0.60, case_scores=FLAT)
    delta = (required(0.02, 0.05, 1) + required(0.02, 0.05, 4)) / 2   # between one look's bar and four's
    cand = summary(0.60 + delta, case_scores=WIN)
    assert judge(cand, base, noisy(looks=1)).result == "kept"
    v = judge(cand, base, noisy(looks=4))
    assert v.result == "reverted"
    assert v.noise["looks"] == 4 and v.noise["alpha_per_look"] == pytest.approx(0.0125)
    assert v.noise["required_p"] is None                # the bar moves the threshold, not P


def test_noise_bar_keeps_require_p_uncorrected():
    # 3 of 30 cases better, 27 tied: the bootstrap P is some p0 < 1; require_p exactly p0 keeps,
    # whatever the number of looks (the bar corrects the delta threshold, not P).
    base = summary(0.60, case_scores=FLAT)
    cand = summary(0.70, case_scores={**FLAT, "c0": 1.0, "c1": 1.0, "c2": 1.0})
    p0 = judge(cand, base).p_better
    assert 0.9 < p0 < 1.0
    at = judge(cand, base, noisy(require_p=p0, looks=16))
    assert at.result == "kept" and at.noise["required_p"] == p0
    assert any(r.startswith("noise bar: delta >= ") and f"and P >= {p0:.3f}" in r for r in at.reasons)
    above = judge(cand, base, noisy(require_p=min(0.999, p0 + 0.005)))
    assert above.result == "reverted"
    assert any(r.startswith(f"P(candidate > baseline) {p0:.3f} < ") for r in above.reasons)
    assert judge(cand, base, noisy(looks=16)).result == "kept"   # no require_p: no P test


def test_noise_bar_prefers_the_study_estimate_and_is_recorded():
    base = summary(0.60, case_scores=FLAT)
    cand = summary(0.65, case_scores=WIN)
    cfg = noisy(sd=0.02, noise_source="benchmark prior")
    assert judge(cand, base, cfg).result == "reverted"          # needs 0.0634
    measured = Noise(sd=0.01, adapters=12, source="prior pooled with 2 repeats")
    v = judge(cand, base, dataclasses.replace(cfg, noise=measured))
    assert v.result == "kept"                                   # needs 0.0317
    st = json.loads(json.dumps(v.stats()))
    assert st["noise"]["sd"] == 0.01 and st["noise"]["source"] == "prior pooled with 2 repeats"
    assert st["noise"]["detectable"] == pytest.approx(st["noise"]["required_delta"]
                                                      + NormalDist().inv_cdf(0.8) * 2 ** 0.5 * 0.01)
    assert any(r.startswith("noise bar: delta >= 0.032") for r in v.reasons)
    assert judge(cand, base).noise is None and "noise" in judge(cand, base).stats()
    assert judge(cand, None, cfg).noise is None                 # nothing to beat: no bar


def test_vetoes_outrank_the_noise_bar():
    base = summary(0.60, case_scores=FLAT)
    assert judge(summary(0.9, jailbreak=0.5, case_scores=WIN), base, noisy()).result == "veto_jailbreak"


@pytest.mark.parametrize("kwargs", [dict(alpha=0.05), dict(alpha=0.0, noise_sd=0.01), dict(alpha=1.0, noise_sd=0.01),
                                    dict(alpha=0.05, noise_sd=-0.01), dict(alpha=0.05, noise_sd=float("nan")),
                                    dict(looks=0), dict(looks=True), dict(noise_adapters=0)])
def test_bad_noise_config(kwargs):
    with pytest.raises(ConfigError, match="gate\\."):
        GateConfig(**kwargs)


def test_night_gate_sets_looks_and_pools_the_prior():
    cfg = GateConfig(alpha=0.05, noise_sd=0.02, noise_adapters=10, noise_source="prior")
    night = night_gate(cfg, looks=4, trials=[])
    assert night.looks == 4 and night.noise == Noise(0.02, 10, "prior")
    off = night_gate(GateConfig(), looks=4, trials=[])
    assert off.looks == 4 and off.noise is None and off.noise_bar() is None
