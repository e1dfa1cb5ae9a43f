"""kill -9 at every step of a promotion, the study's bookkeeping included, as the night does
it (study.workers.promote_cas): under the promotion mutex the adapter is copied, verified,
published, linked, swapped in, recorded in history.json (study.promoter.Promoter), and then
named the study's `baseline`. After a kill at any of those instants `adapters/current` points
at a complete adapter, and once the next night has started (study.follow.reconcile_current,
then sync_current) the study's baseline names that adapter with its score.

The promotion runs in a forked child (the imports are paid once), paused between steps by the
test-only AUTORESEARCH_TEST_PROMOTE_PAUSE hook, then SIGKILLed at the chosen step.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import optuna
import pytest

from evaluation import read_eval_results, write_eval_results
from faultlib import STUDY, load_study, planted_hits, run_night
from study.follow import WorkerOptions, reconcile_current, sync_current
from study.gate import GateConfig, judge
from study.promoter import PAUSE_ENV, Promoter, file_digests
from study.storage import open_storage, open_study
from study.workers import BASE_ID, Candidate, promote_cas, read_baseline

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")]
STEPS = ["copy", "verify", "publish", "link", "swap", "history", "baseline"]
SCORES = {BASE_ID: 0.0, "a": 0.41, "b": 0.47}
GATE = GateConfig(jailbreak_floor=0.0)   # these evals are flat: only the ratchet decides


def flat_eval(base_eval: Path, score: float) -> dict:
    """The base model's eval shape (its cases, agents, categories), every score `score`."""
    ev = read_eval_results(base_eval)
    for key in ("per_category", "per_agent"):
        ev[key] = {k: score for k in ev[key]}
    ev["per_agent_category"] = {a: {c: score for c in row} for a, row in ev["per_agent_category"].items()}
    ev["overall"] = score
    for case in ev["cases"]:
        case["score"] = score
    return ev


def fake_trained_adapter(folder: Path, seed: int, ev: dict) -> Path:
    """What a trial leaves in adapters-experimental/<id>: weights, config, its eval."""
    folder.mkdir(parents=True)
    rnd = random.Random(seed)
    (folder / "adapters.safetensors").write_bytes(bytes(rnd.getrandbits(8) for _ in range(256 * 1024)))
    (folder / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "num_layers": 4 + seed}))
    write_eval_results(folder / "eval_results.json", ev)
    return folder


def loadable_adapter(folder: Path, seed: int, ev: dict, model_dir: Path) -> Path:
    """A real (untrained) LoRA adapter for the demo model that mlx-lm loads, with its eval:
    a real night's canary evaluates the current adapter before anything else."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from evaluation.results import model_sha256
    mx.random.seed(seed)
    model, _ = load(str(model_dir))
    model.freeze()
    lora = {"rank": 4, "scale": 2.0, "dropout": 0.0}
    linear_to_lora_layers(model, 4, lora)
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (folder / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 4, "lora_parameters": lora, "model": str(model_dir),
        "base_model": {"path": str(model_dir), "sha256": model_sha256(model_dir)}}))
    write_eval_results(folder / "eval_results.json", ev)
    return folder


def study_at(url: str) -> optuna.Study:
    return open_study(open_storage(url, heartbeat_interval=60, grace_period=180), STUDY, n_startup_trials=4)


def promote_like_the_night(url: str, adapters: Path, src: Path, exp_id: str, against: str, trial_id: int,
                           evals: dict[str, dict]):
    """What the night's on_verdict does with a kept trial."""
    study = study_at(url)
    verdict = judge(evals[exp_id], evals[against], GATE)
    assert verdict.kept, verdict.reasons
    cand = Candidate(optuna.Trial(study, trial_id), exp_id, evals[exp_id], verdict, against)
    return promote_cas(study, url, cand, rejudge=lambda base: judge(evals[exp_id], base, GATE), baselines=None,
                       promote=lambda v: Promoter(adapters).promote(src, exp_id, meta={"score": v.score}))


def _promote_child(args: tuple, pause_dir: str) -> None:
    os.environ[PAUSE_ENV] = pause_dir
    try:
        promote_like_the_night(*args)
    finally:
        os._exit(0)


def kill_at(step: str, pause_dir: Path, args: tuple) -> list[str]:
    """Promote in a forked child, releasing each pause until `step`; SIGKILL it there."""
    pause_dir.mkdir()
    child = multiprocessing.get_context("fork").Process(target=_promote_child, args=(args, str(pause_dir)))
    child.start()
    seen: list[str] = []
    end = time.monotonic() + 60
    try:
        while time.monotonic() < end:
            for marker in sorted(pause_dir.iterdir(), key=lambda m: m.stat().st_mtime_ns):
                name = marker.name.split("-", 2)[2]
                if name == step:
                    os.kill(child.pid, signal.SIGKILL)
                    child.join(10)
                    return seen + [name]
                seen.append(name)
                marker.unlink()
            assert child.is_alive(), f"the promotion finished before step {step}: saw {seen}"
            time.sleep(0.005)
        raise AssertionError(f"step {step} never reached: saw {seen}")
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def trial_for(study: optuna.Study, exp_id: str) -> int:
    """A running trial that evaluated to SCORES[exp_id]; returns its trial id."""
    trial = study.ask()
    trial.set_user_attr("experiment_id", exp_id)
    trial.set_user_attr("score", SCORES[exp_id])
    return trial._trial_id


def last_night(root: Path, url: str, sources: dict[str, Path], evals: dict[str, dict]) -> int:
    """Last night promoted `a`; tonight's trial `b` is kept and about to be promoted."""
    study = study_at(url)
    promote_like_the_night(url, root / "adapters", sources["a"], "a", BASE_ID, trial_for(study, "a"), evals)
    return trial_for(study, "b")


def assert_consistent(study: optuna.Study, promoter: Promoter, sources: dict[str, Path]) -> str:
    current = promoter.current()
    assert current is not None
    assert file_digests(current) == file_digests(sources[current.name]), "current is not a complete adapter"
    ref = read_baseline(study)
    assert (ref.id, ref.score) == (current.name, SCORES[current.name])
    return current.name


@pytest.fixture
def setup(tmp_path, base_eval):
    evals = {k: flat_eval(base_eval, s) for k, s in SCORES.items()}
    sources = {k: fake_trained_adapter(tmp_path / "adapters-experimental" / k, i, evals[k])
               for i, k in enumerate(("a", "b"))}
    url = f"sqlite:///{tmp_path / 'autoresearch.db'}"
    b_trial = last_night(tmp_path, url, sources, evals)
    return tmp_path, url, sources, evals, b_trial


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_every_step_of_a_promotion(setup, step):
    root, url, sources, evals, b_trial = setup
    promoter = Promoter(root / "adapters")
    seen = kill_at(step, root / "pause", (url, promoter.root, sources["b"], "b", "a", b_trial, evals))
    assert seen == STEPS[:STEPS.index(step) + 1]
    swapped = STEPS.index(step) > STEPS.index("swap")
    assert promoter.current_id() == ("b" if swapped else "a")
    study = study_at(url)
    assert read_baseline(study).id == "a"            # killed before the study heard of b
    # The next night starts: reconcile with this machine's current, then follow the study.
    repaired = reconcile_current(study, promoter, url)
    assert (repaired is not None) is swapped
    sync_current(study, promoter, WorkerOptions(), url)
    assert assert_consistent(study, promoter, sources) == ("b" if swapped else "a")
    if not swapped:   # and a promotion that night goes through cleanly
        promote_like_the_night(url, promoter.root, sources["b"], "b", "a", b_trial, evals)
        assert assert_consistent(study, promoter, sources) == "b"
    assert sorted(p.name for p in promoter.promoted.iterdir()) == ["a", "b"]   # no temp copy left
    # Killed between the swap and history.json: the link is the truth (study/promoter.py);
    # the next night records b, so `promote --list` shows what is served, and rollback returns to a.
    added = promoter.repair_history()
    assert (added is not None) is (step == "history")
    assert [r["id"] for r in promoter.list()] == ["a", "b"]
    assert promoter.list()[-1]["current"]
    assert promoter.rollback().name == "a"


def test_the_next_night_repairs_the_study_baseline(fault_workdir, base_eval, demo_assets):
    # A real nightly after a kill between the swap and the study's attr. Its budget fits no
    # trial before any deadline, so it stops once it has started (reconciled, followed, canary).
    wd = fault_workdir(budget_s=100000)
    evals = {k: flat_eval(base_eval, s) for k, s in SCORES.items()}
    sources = {k: loadable_adapter(wd / "adapters-experimental" / k, i, evals[k], demo_assets.model_dir)
               for i, k in enumerate(("a", "b"))}
    url = f"sqlite:///{wd / 'autoresearch.db'}"
    b_trial = last_night(wd, url, sources, evals)
    kill_at("baseline", wd / "pause", (url, wd / "adapters", sources["b"], "b", "a", b_trial, evals))
    assert read_baseline(load_study(wd)).id == "a"
    assert Promoter(wd / "adapters").current_id() == "b"

    out = run_night(wd, "--max-trials", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "study baseline set to b" in " ".join(out.stdout.split())
    ref = read_baseline(load_study(wd))
    assert (ref.id, ref.score) == ("b", SCORES["b"])
    assert Promoter(wd / "adapters").current_id() == "b"
    assert planted_hits(wd) == []
