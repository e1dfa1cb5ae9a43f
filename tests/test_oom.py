"""OOM as knowledge: a real MLX allocation failure in the training child becomes a
COMPLETE, infeasible trial that TPE learns from; the exact config never runs again;
three in a row end the night (study.oom)."""
from __future__ import annotations

import functools
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from objective import TrialContext, objective
from study.oom import already_oomed, known_oom, oom_streak, oom_summary, same_params
from train_core import run_training

from train_data import long_data

REPO = Path(__file__).resolve().parent.parent


def oom_context(tmp: Path, model: Path, data: Path, study: optuna.Study, started: list) -> TrialContext:
    """Batches of 64 x 1280 tokens in a child capped at 2 GiB of address space: MLX's CPU
    allocator gets NULL from malloc and the child dies by SIGSEGV (test_train_core)."""
    def suggest(trial: optuna.Trial) -> dict:
        return {"NUM_LAYERS": trial.suggest_int("NUM_LAYERS", 1, 3), "LORA_RANK": trial.suggest_categorical("LORA_RANK", [4]),
                "LORA_ALPHA": trial.suggest_categorical("LORA_ALPHA", [8.0]), "DROPOUT": trial.suggest_categorical("DROPOUT", [0.0]),
                "LEARNING_RATE": trial.suggest_categorical("LEARNING_RATE", [1e-4]), "ITERS": trial.suggest_categorical("ITERS", [4]),
                "GRAD_ACCUM": trial.suggest_categorical("GRAD_ACCUM", [1]),
                "MAX_SEQ_LENGTH": trial.suggest_categorical("MAX_SEQ_LENGTH", [1280]),
                "DATA_MIX_RATIO": trial.suggest_categorical("DATA_MIX_RATIO", [0.5])}

    capped = functools.partial(run_training, rlimit_as=2 << 30, env={"MALLOC_ARENA_MAX": "2"})

    def runner(spec, callbacks, **kw):
        started.append(spec.adapter_dir)
        return capped(spec, callbacks, **kw)

    return TrialContext(
        mode="proxy", model_dir=model, model_name="demo", suggest=suggest,
        prepare_data=lambda ratio: SimpleNamespace(dir=data, hash="long"),
        experimental_root=tmp / "adapters-experimental", council_path=REPO / "council.yaml",
        budget_s=lambda: 60.0, baseline=lambda: None,
        on_verdict=lambda trial, verdict, evaluated, adapter_dir: verdict.result,
        train_defaults=dict(batch_size=64, val_every=2, val_batches=1), progress=False,
        run_training=runner, known_oom=lambda params: known_oom(study, params),
    )


@pytest.mark.slow
def test_real_ooms_are_infeasible_known_and_end_the_night(demo_assets, tmp_path):
    data = long_data(tmp_path / "long")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    started: list[str] = []
    ctx = oom_context(tmp_path, Path(demo_assets.model_dir), data, study, started)
    for layers in (1, 2, 3):
        study.enqueue_trial({"NUM_LAYERS": layers})
    study.optimize(lambda t: objective(t, ctx), n_trials=3)

    assert len(started) == 3
    for t in study.trials:
        ua = t.user_attrs
        assert t.state == optuna.trial.TrialState.COMPLETE and t.value == 0.0   # not a bare FAIL
        assert t.constraints == {"oom": 1.0}
        assert (ua["result"], ua["fail_reason"], ua["feasible"]) == ("failed:oom", "oom", False)
        assert "SIGSEGV" in ua["reasons"][0] and ua["stopped_by"] == "oom"
    with pytest.raises(ValueError):
        study.best_trial   # constraint-aware: an OOM is never the best trial
    assert oom_streak(study.trials) == 3
    assert "3 trials in a row ran out of memory" in oom_summary(study.trials)

    # The exact config again: answered from trial 1's OOM, no child started.
    assert already_oomed(study, study.trials[1].params)
    study.enqueue_trial(dict(study.trials[1].params))
    t0 = time.monotonic()
    study.optimize(lambda t: objective(t, ctx), n_trials=1)
    known = study.trials[-1]
    assert len(started) == 3 and time.monotonic() - t0 < 5
    assert known.user_attrs["result"] == "failed:oom" and known.constraints == {"oom": 1.0}
    assert "trial 1" in known.user_attrs["oom_known_from"]
    assert oom_streak(study.trials) == 3   # a known answer cost nothing: neither counts nor breaks


def _frozen(number: int, state, params: dict, value=None, result="kept", constraints=None, known=False):
    attrs = {"result": result}
    if known:
        attrs["oom_known_from"] = "trial 0"
    return SimpleNamespace(number=number, state=state, params=params, value=value, user_attrs=attrs,
                           constraints=constraints or {})


def test_streak_counts_only_the_tail():
    C = optuna.trial.TrialState.COMPLETE
    oom = lambda n, known=False: _frozen(n, C, {"x": n}, 0.0, "failed:oom", {"oom": 1.0}, known)
    ok = lambda n: _frozen(n, C, {"x": n}, 0.5)
    assert oom_streak([]) == 0
    assert oom_streak([oom(0), oom(1), ok(2), oom(3), oom(4)]) == 2
    assert oom_streak([oom(0), oom(1), oom(2, known=True), oom(3)]) == 3
    assert oom_streak([oom(0), oom(1), oom(2), ok(3)]) == 0
    assert same_params({"a": 1e-4, "b": 2}, {"a": 0.0001, "b": 2.0})
    assert not same_params({"a": 1e-4}, {"a": 1.1e-4}) and not same_params({"a": 1}, {"a": 1, "b": 2})


def test_tpe_learns_the_oom_region_from_complete_infeasible_trials():
    """Why an OOM must be COMPLETE + constraint, not FAIL: the score rises with x up to
    the OOM cliff at 0.7. Recorded as FAIL, the OOMs are invisible to TPE, which keeps
    proposing past the cliff; recorded as infeasible, TPE learns to stay below it."""
    def history(study: optuna.Study, as_fail: bool) -> None:
        dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
        for i in range(14):
            x = 0.05 * i + 0.02
            study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist, value=x,
                                                      system_attrs={"constraints:oom": 0.0}))
        for i in range(10):
            x = 0.72 + 0.028 * i
            if as_fail:
                study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist,
                                                          state=optuna.trial.TrialState.FAIL))
            else:
                study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist, value=0.0,
                                                          system_attrs={"constraints:oom": 1.0}))

    def share_past_cliff(as_fail: bool) -> float:
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(n_startup_trials=0, seed=3))
        history(study, as_fail)
        xs = []
        for _ in range(30):
            t = study.ask()
            xs.append(t.suggest_float("x", 0.0, 1.0))
            study.tell(t, state=optuna.trial.TrialState.FAIL)  # not learned from: same history each time
        return sum(x > 0.7 for x in xs) / len(xs)

    infeasible, failed = share_past_cliff(False), share_past_cliff(True)
    print(f"share past the cliff: infeasible {infeasible:.2f}, FAIL {failed:.2f}")
    assert infeasible < failed and infeasible <= 0.2, (infeasible, failed)
