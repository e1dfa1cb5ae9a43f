"""The deadline (`--deadline HH:MM`): no trial starts that cannot finish before it, a trial's
training is stopped by its budget, which is never more than the time left minus the eval
estimate and overhead, and council-mlx (a real `mlx_lm server`) is up before the deadline.

A trial starts only when its whole budget + eval estimate + overhead fits
(study.deadline.trial_fits); the budget handed to train_core is min(budget, time left − eval
− overhead) at the trial's start (study.deadline.training_budget), so the deadline can come
inside a trial only by the seconds between that check and the start. When those seconds ate
the whole budget, the trial ends `failed:deadline` without training and the night stops.
"""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta

import optuna
import pytest

from corpus import PreparedData
from faultlib import free_port, health, load_study, managed_serving, planted_hits, run_night, stop_server
from objective import TrialContext, TrialFailed, objective
from study.deadline import TRIAL_OVERHEAD_S

EVAL_S = 100   # the night's eval estimate: a true upper bound here (the demo eval takes 15-50 s)
BUDGET_S = 4


def deadline_after(seconds: float) -> datetime:
    """The first whole minute at least `seconds` from now (--deadline takes HH:MM)."""
    return (datetime.now() + timedelta(seconds=seconds)).replace(second=0, microsecond=0) + timedelta(minutes=1)


@pytest.mark.slow
def test_deadline_too_close_for_a_trial(fault_workdir):
    port = free_port()
    wd = fault_workdir(budget_s=120, overrides=managed_serving(port))
    deadline = deadline_after(20)                 # 20-80 s away; a trial needs at least 60 (half of 120) + 40 + 20
    try:
        out = run_night(wd, "--max-trials", "3", "--deadline", f"{deadline:%H:%M}")
        ended = datetime.now()
        up = health(port)
    finally:
        stop_server(wd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "no trial fits before the deadline" in " ".join(out.stdout.split())
    assert [t for t in load_study(wd).get_trials(deepcopy=False) if t.state.is_finished()] == []
    assert ended < deadline and up


@pytest.mark.slow
def test_deadline_stops_the_night_and_serving_is_up_before_it(fault_workdir):
    port = free_port()
    # iters_scale 1: 800 iterations cannot finish in 4 s, so the budget is what stops training.
    wd = fault_workdir(budget_s=BUDGET_S, overrides={**managed_serving(port), "eval_s = 40": f"eval_s = {EVAL_S}",
                                                     "iters_scale = 0.5": "iters_scale = 1.0"})
    per_trial = BUDGET_S + EVAL_S + TRIAL_OVERHEAD_S
    deadline = deadline_after(per_trial + 45)     # room for a trial after a start-up of up to 45 s
    try:   # more trials allowed than can fit: the deadline, not the cap, ends this night
        out = run_night(wd, "--max-trials", "10", "--deadline", f"{deadline:%H:%M}")
        ended = datetime.now()
        up = health(port)
    finally:
        stop_server(wd)
    text = " ".join(out.stdout.split())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"stopping: the next trial would not finish before {deadline:%H:%M}" in text
    finished = [t for t in load_study(wd).get_trials(deepcopy=False) if t.state.is_finished()]
    assert finished
    trained = [t for t in finished if t.user_attrs["result"] != "failed:deadline"]
    assert trained, "no trial trained"
    for t in trained:
        assert t.user_attrs["stopped_by"] == "budget"
        spec = json.loads((wd / "adapters-experimental" / t.user_attrs["experiment_id"]
                           / "adapter_config.json").read_text())["train"]
        left_at_start = (deadline - t.datetime_start).total_seconds()
        assert spec["budget_s"] <= min(BUDGET_S, left_at_start - EVAL_S - TRIAL_OVERHEAD_S) + 1
    assert all(t.datetime_complete < deadline for t in finished)
    assert ended < deadline and up, f"night ended {ended:%H:%M:%S}, deadline {deadline:%H:%M}, serving up: {up}"
    assert planted_hits(wd) == []


class Paused:
    def __init__(self):
        self.events = []

    @contextlib.contextmanager
    def __call__(self, trial=None):
        self.events.append("stop")
        try:
            yield
        finally:
            self.events.append("start")


def test_no_time_left_at_trial_start_fails_the_trial_cleanly(tmp_path):
    """The seconds between the night's check and the trial's start took the whole budget:
    the trial fails as `deadline` (not as bad input), nothing trains, serving comes back."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    serving, trained = Paused(), []
    ctx = TrialContext(
        mode="proxy", model_dir=tmp_path / "model", model_name="demo",
        suggest=lambda t: {"DATA_MIX_RATIO": 0.5},
        prepare_data=lambda ratio: PreparedData(dir=tmp_path / "data", manifest={}, hash="d" * 64),
        experimental_root=tmp_path / "adapters-experimental", council_path=tmp_path / "council.yaml",
        budget_s=lambda: 0.0, baseline=lambda: None, on_verdict=lambda *a: "kept",
        pause_serving=serving, run_training=lambda *a, **k: trained.append(a))
    with pytest.raises(TrialFailed, match="deadline"):
        objective(trial, ctx)
    attrs = study.trials[0].user_attrs
    assert attrs["result"] == "failed:deadline" and attrs["feasible"] is False
    assert trained == [] and serving.events == ["stop", "start"]


def test_the_last_trial_may_take_what_is_left_of_the_night():
    """Packing: a whole budget no longer fits, but min_budget_s of it does: the trial starts
    and training_budget grants what is left; below min_budget_s nothing starts."""
    from study.deadline import trial_fits, training_budget
    now = datetime(2030, 1, 1, 4, 0, 0)
    deadline = now + timedelta(seconds=600 + 300 + TRIAL_OVERHEAD_S)     # room for a 600 s budget
    assert not trial_fits(deadline, 900, 300, now)
    assert trial_fits(deadline, 900, 300, now, min_budget_s=450)
    assert training_budget(deadline, 900, 300, now) == pytest.approx(600)
    assert not trial_fits(deadline, 900, 300, now, min_budget_s=601)
    assert trial_fits(deadline, 500, 300, now) and training_budget(deadline, 500, 300, now) == 500
