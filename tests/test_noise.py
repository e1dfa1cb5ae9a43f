"""study/noise.py: the training-seed noise estimate (prior pooled with the study's repeats)."""
from __future__ import annotations

import math

import optuna
import pytest

from study.noise import Noise, bar, pooled, repeat_groups, study_noise

PRIOR = Noise(sd=0.02, adapters=10, source="benchmark prior")


def test_no_repeats_is_the_prior():
    assert pooled(PRIOR, []) is PRIOR
    assert pooled(PRIOR, [[0.5]]) is PRIOR                # one adapter of a config is no spread


def test_pooled_weights_by_degrees_of_freedom():
    # prior: 9 dof of 0.02^2; group: [0.50, 0.56] has sum of squares 2 * 0.03^2 on 1 dof
    got = pooled(PRIOR, [[0.50, 0.56]])
    assert got.sd == pytest.approx(math.sqrt((9 * 0.02 ** 2 + 2 * 0.03 ** 2) / 10))
    assert got.adapters == 12 and "2 adapters of 1 repeated config" in got.source
    # many repeats move it to what the study shows
    many = pooled(PRIOR, [[0.5, 0.6]] * 200)
    assert many.sd == pytest.approx(math.sqrt(0.005), rel=0.03)


def test_repeat_groups_need_different_seeds():
    a, b = {"LR": 1e-4, "L": 48}, {"LR": 5e-6, "L": 32}
    rows = [(a, 0, 0.5), (dict(reversed(list(a.items()))), 1, 0.55), (a, 1, 0.9),   # seed 1 again: ignored
            (b, 0, 0.3), (b, 0, 0.31),                                                # one seed only: no group
            (a, 2, float("nan")), (b, 3, None)]
    assert repeat_groups(rows) == [[0.5, 0.55]]


def test_study_noise_from_a_real_study():
    study = optuna.create_study(direction="maximize")
    dist = {"LR": optuna.distributions.FloatDistribution(1e-6, 1e-4, log=True)}

    def add(lr, score, seed=None, state=optuna.trial.TrialState.COMPLETE):
        attrs = {"score": score} if score is not None else {}
        if seed is not None:
            attrs["train_seed"] = seed
        study.add_trial(optuna.trial.create_trial(params={"LR": lr}, distributions=dist, user_attrs=attrs,
                                                  state=state, value=score if state.name == "COMPLETE" else None))
    add(1e-4, 0.50)                 # no seed attr: trained with TrainSpec's default seed 0
    add(1e-4, 0.50)                 # the same seed again: the same adapter, not a new draw
    assert study_noise(study.get_trials(), PRIOR) is PRIOR
    add(1e-4, 0.56, seed=7)
    add(5e-6, 0.40, seed=1, state=optuna.trial.TrialState.FAIL)
    got = study_noise(study.get_trials(), PRIOR)
    assert got.sd == pytest.approx(math.sqrt((9 * 0.02 ** 2 + 2 * 0.03 ** 2) / 10)) and got.adapters == 12


def test_bar_numbers():
    b = bar(0.02, 0.05, 4, PRIOR)
    assert b.z == pytest.approx(2.2414, abs=1e-4) and b.required_p is None
    assert bar(0.02, 0.05, 4, PRIOR, require_p=0.95).required_p == 0.95
    assert b.required_delta == pytest.approx(b.z * math.sqrt(2) * 0.02)
    assert b.detectable == pytest.approx(b.required_delta + 0.8416 * math.sqrt(2) * 0.02, abs=1e-4)
    assert bar(0.02, 0.05, 1, Noise(0.0, 2, "x")).required_delta == 0.02
    with pytest.raises(ValueError):
        Noise(sd=-1.0, adapters=2, source="x")


def _trial(stats):
    return optuna.trial.create_trial(value=0.5, user_attrs={"stats": stats} if stats is not None else {})


def test_report_and_vault_say_what_the_night_could_tell():
    from study.gate import GateConfig, judge
    from study.noise import report_lines
    from study.vault import statistics
    cases = [{"id": f"c{i}", "split": "dev", "score": 0.0} for i in range(20)]
    base = {"overall": 0.5, "per_category": {"jailbreak": 0.9}, "per_agent": {}, "cases": cases}
    cand = {**base, "overall": 0.53}
    v = judge(cand, base, GateConfig(alpha=0.05, noise_sd=0.01, looks=4, require_p=0.9,
                                     noise_source="demo prior (10 seeds)"))
    lines = "\n".join(report_lines([_trial(None), _trial(v.stats())]))
    need = v.noise["required_delta"]
    assert "## Noise" in lines and f"**+{need:.3f}**" in lines and "demo prior (10 seeds)" in lines
    assert f"+{v.noise['detectable']:.3f} passes 80%" in lines and "4 candidate(s)" in lines
    assert f"Noise bar: delta had to reach +{need:.3f} and P 0.900" in "\n".join(statistics(v.stats()))
    off = judge(cand, base)
    text = "\n".join(report_lines([_trial(off.stats())]))
    assert "noise bar is off" in text
    assert report_lines([_trial(None)]) == [] and report_lines([]) == []
