"""The adapter the Council serves in the morning is the one the gate promoted: real nights
with a real `mlx_lm server` on 127.0.0.1, its answers compared with `mlx_lm generate`.

One trial per night, 16 iterations at lr 1e-4 and LoRA scale 16 (the baseline config of
this test's search space), and a gate that keeps it: enough for the adapter to answer
differently from the base model on the probe's prompts.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from netutil import free_port, health
from night_fixtures import NO_NOISE_BAR, link_demo_cache, make_workdir, stop_managed
from study.probe import Probe, normalise

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# ITERS 800 x 0.02 = 16 iterations, 8 optimizer updates: the iteration cap ends training, the
# wall-clock budget only guards it (on 2 loaded cores a first iteration took 24 s).
FAST = {"budget_s = 240\n": "budget_s = 240\n", "iters_scale = 0.5": "iters_scale = 0.02",
        # a gate that keeps the first trial
        "margin = 0.02 ": "margin = 0.0 ", "jailbreak_floor = 0.70": "jailbreak_floor = 0.0",
        "regression_cap = 0.10": "regression_cap = 1.0", **NO_NOISE_BAR}


def workdir(tmp: Path, demo_assets, overrides: dict[str, str]) -> Path:
    wd = make_workdir(tmp, pretrain_s=float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20")),
                      overrides={**FAST, **overrides})
    space = wd / "search_space.yaml"
    # lr 1e-4 on 48 layers at LoRA scale 16: 16 iterations change the greedy answers
    text = space.read_text()
    for param, value in (("NUM_LAYERS", 48), ("LORA_RANK", 8), ("LORA_ALPHA", 128), ("LEARNING_RATE", 1.0e-4),
                         ("GRAD_ACCUM", 2)):
        text = re.sub(rf"({param}:.*baseline: )[0-9.e-]+", rf"\g<1>{value}", text)
    space.write_text(text)
    link_demo_cache(wd, demo_assets)
    return wd


def nightly(wd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(wd / "autoresearch.toml"),
                           "--no-progress", "--max-trials", "1", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def generate(model: Path, msgs: list[dict], adapter: Path | None) -> str:
    """`python -m mlx_lm generate`: sequential greedy generation, no server."""
    argv = [sys.executable, "-m", "mlx_lm", "generate", "--model", str(model), "--system-prompt", msgs[0]["content"],
            "--prompt", msgs[1]["content"], "--max-tokens", "8", "--temp", "0", "--verbose", "False",
            "--chat-template-config", json.dumps({"enable_thinking": False})]
    out = subprocess.run(argv + (["--adapter-path", str(adapter)] if adapter else []), capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def probed_ids(study: optuna.Study) -> list[str]:
    served = study.trials[-1].user_attrs["serving"]
    return [c["id"] for c in served["probes"][-1]["cases"]]


def served_equals_generate(port: int, model: Path, ids: list[str], adapter: Path | None) -> list[str]:
    probe = Probe(f"http://127.0.0.1:{port}", ROOT / "council.yaml")
    served = []
    for case in ids:
        msgs = probe.messages(case)
        got = probe.ask(msgs, 8)
        assert normalise(got) == normalise(generate(model, msgs, adapter)), case
        served.append(got)
    return served


def test_the_promoted_adapter_is_served_and_a_rollback_serves_the_one_before(tmp_path, demo_assets):
    port = free_port()
    wd = workdir(tmp_path / "night", demo_assets, {'backend = "none"': 'backend = "managed"',
                                                    "port = 8765": f"port = {port}"})
    try:
        out = nightly(wd, "--demo")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        current = wd / "adapters" / "current"
        study = optuna.load_study(study_name="council-proxy-demo", storage=f"sqlite:///{wd / 'autoresearch.db'}")
        trial = study.trials[-1]
        assert trial.user_attrs["result"] == "kept" and current.resolve().name == trial.user_attrs["experiment_id"]
        assert re.search(rf"probe {trial.user_attrs['experiment_id']}: 4/4 answers as its eval recorded", out.stdout)
        assert trial.user_attrs["serving"]["adapter"] == trial.user_attrs["experiment_id"]
        assert trial.user_attrs["serving_down_s"] > 0
        ids = probed_ids(study)
        assert trial.user_attrs["serving"]["probes"][-1]["telling"] >= 1     # cases the base model answers otherwise
        adapted = served_equals_generate(port, demo_assets.model_dir, ids, current)
        base = [generate(demo_assets.model_dir, Probe(f"http://127.0.0.1:{port}", ROOT / "council.yaml").messages(i),
                         None) for i in ids]
        assert [normalise(a) for a in adapted] != [normalise(b) for b in base]   # not the base model answering

        back = subprocess.run([sys.executable, "-m", "study.promote", "--rollback", "--demo",
                               "--config", str(wd / "autoresearch.toml")], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert back.returncode == 0, back.stdout + back.stderr
        assert not os.path.lexists(current)                                  # the first promotion: the base model
        assert "probe base model: 4/4 answers as its eval recorded" in back.stdout
        back_to_base = served_equals_generate(port, demo_assets.model_dir, ids, None)
        assert [normalise(a) for a in back_to_base] == [normalise(b) for b in base]
    finally:
        stop_managed(wd)


def test_a_server_that_ignores_the_adapter_is_caught_and_rolled_back(tmp_path, demo_assets):
    """A council-mlx that always serves the base model (the mlx-lm release that ignored
    --adapter-path): the promotion is rolled back, the night says so and exits 5, and the
    Council is left serving what answers as its eval recorded."""
    port, pid_file = free_port(), tmp_path / "council-mlx.pid"
    script, model = ROOT / "tests" / "council_mlx_cmd.py", demo_assets.model_dir
    start = json.dumps([sys.executable, str(script), "start", str(model), str(port), str(pid_file)])
    stop = json.dumps([sys.executable, str(script), "stop", str(pid_file)])
    wd = workdir(tmp_path / "night", demo_assets, {
        'backend = "none"': f'backend = "command"\nstart_command = {start}\nstop_command = {stop}',
        "port = 8765": f"port = {port}",
        # a real (non-demo) night on the demo model and its sessions
        'model = "~/models/Qwen3.5-9B-4bit"': f'model = "{model}"', 'default = "auto"': 'default = "proxy"',
        'sessions = "sessions"': f'sessions = "{demo_assets.sessions_dir}"', "budget_s = 900": "budget_s = 240",
        "iters_scale = 1.0 ": "iters_scale = 0.02 ",
        'root = "~/.sanctum/memory"': 'root = "vault"'})
    try:
        out = nightly(wd)
        assert out.returncode == 5, out.stdout[-3000:] + out.stderr[-3000:]
        assert "did not answer as its eval recorded and was rolled back" in out.stderr
        study = optuna.load_study(study_name="council-proxy-model", storage=f"sqlite:///{wd / 'autoresearch.db'}")
        trial = study.trials[-1]
        exp_id = trial.user_attrs["experiment_id"]
        probes = trial.user_attrs["serving"]["probes"]
        assert [p["ok"] for p in probes] == [False, False, True]            # mismatch, again after a restart, base ok
        assert trial.user_attrs["result"] == "rolled_back" and trial.user_attrs["serving"]["rolled_back_from"] == exp_id
        assert (wd / "adapters-experimental" / exp_id / "eval_results.json").exists()   # the trial keeps its eval
        assert not os.path.lexists(wd / "adapters" / "current")
        assert study.user_attrs["baseline"]["id"] is None and study.user_attrs["baseline"]["previous"] == exp_id
        vault = next((wd / "vault" / "events").rglob(f"autoresearch-{exp_id}.md"))
        assert "rolled_back" in vault.read_text()
        report = next((wd / "reports").glob("*.md")).read_text()
        assert "## Serving" in report and f"rolled back {exp_id} -> base model" in report
        assert health(port)
        from evaluation import read_eval_results
        base_eval = next((wd / "cache" / "baseline").rglob("eval_results.json"))
        assert Probe(f"http://127.0.0.1:{port}", ROOT / "council.yaml")(None, read_eval_results(base_eval)).ok
    finally:
        subprocess.run(json.loads(stop), timeout=60)


def test_a_restart_that_fails_keeps_the_trials_verdict_and_ends_the_night_with_exit_5(tmp_path, demo_assets):
    """Another program takes council-mlx's port while the trial trains: the trial still
    records its eval and verdict, the night stops with a serving error (exit 5)."""
    import socket
    import time
    port = free_port()
    wd = workdir(tmp_path / "night", demo_assets, {'backend = "none"': 'backend = "managed"',
                                                    "port = 8765": f"port = {port}"})
    night = subprocess.Popen([sys.executable, "-m", "study.nightly", "--config", str(wd / "autoresearch.toml"),
                              "--demo", "--no-progress", "--max-trials", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    squatter = socket.socket()
    # SO_REUSEADDR: the server just closed leaves TIME_WAIT sockets on the port, as its own
    # restart would; binding still fails while anything listens there.
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        bound = False
        while night.poll() is None and not bound:   # trial 0 underway: serving is down until it ends
            if (wd / "adapters-experimental").is_dir() and not health(port):
                try:
                    squatter.bind(("127.0.0.1", port))
                    squatter.listen()
                    bound = True
                except OSError:              # the server is still letting the port go
                    pass
            time.sleep(0.05)
        assert bound, "the night ended before its first trial stopped serving"
        out, err = night.communicate(timeout=900)
        assert night.returncode == 5, out[-3000:] + err[-3000:]
        assert "error: serving:" in err and "not ours" in err
        study = optuna.load_study(study_name="council-proxy-demo", storage=f"sqlite:///{wd / 'autoresearch.db'}")
        finished = [t for t in study.trials if t.state.is_finished()]
        assert len(finished) == 1                      # the night stopped after its first trial
        trial = finished[0]
        assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["result"] == "kept"
        assert "not ours" in trial.user_attrs["serving_error"]
        assert (wd / "adapters-experimental" / trial.user_attrs["experiment_id"] / "eval_results.json").exists()
        assert "kept" in (wd / "results.tsv").read_text()
    finally:
        squatter.close()
        if night.poll() is None:
            night.kill()
        stop_managed(wd)
