"""council-mlx follows adapters/current: a real `mlx_lm server` on 127.0.0.1 is restarted
when current names another adapter, a stale PID file never gets a stranger signalled, and
a serving failure never costs a finished trial its verdict nor SIGTERM its exit code."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from datetime import datetime
from pathlib import Path

import optuna
import pytest

from common.errors import ConfigError
from night_fixtures import make_workdir
from objective import experiment_id, parse_experiment_id
from study.config import load_settings
from study.keeper import NightServing, ServingKeeper
from study.probe import answers_match, pick_cases
from study.promoter import Promoter
from study.serving import ManagedServing, make_serving, port_open, process_identity
from netutil import free_port

ROOT = Path(__file__).resolve().parents[1]


def chat(port: int, text: str) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


@pytest.fixture
def settings(tmp_path):
    port = free_port()
    wd = make_workdir(tmp_path / "night", overrides={'backend = "none"': 'backend = "managed"',
                                                     "port = 8765": f"port = {port}"})
    return load_settings(wd / "autoresearch.toml")


def _stranger() -> subprocess.Popen:
    """A process that is not our server (what a recycled PID belongs to after a reboot)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])


# --- the PID file (no model needed) ---------------------------------------------------------

@pytest.mark.parametrize("form", ["legacy", "json"])
def test_a_stale_pid_file_never_gets_a_stranger_signalled(settings, tmp_path, form):
    serving = ManagedServing(settings, tmp_path / "model", tmp_path / "adapters")
    stranger = _stranger()
    try:
        serving.pid_file.parent.mkdir(parents=True, exist_ok=True)
        if form == "legacy":      # what earlier versions wrote: a bare number
            serving.pid_file.write_text(f"{stranger.pid}\n")
        else:                     # our format, but that PID is another process now
            serving.pid_file.write_text(json.dumps({"pid": stranger.pid, "port": settings.serving.port,
                                                    "argv": serving.argv(), "adapter": None,
                                                    "started": "Thu Jan  1 00:00:00 1970"}))
        assert serving.pid() is None
        assert not serving.pid_file.exists()               # removed as stale
        serving.pid_file.write_text(f"{stranger.pid}\n")
        serving.stop()
        assert stranger.poll() is None, "stop() signalled a process that is not our server"
        assert not serving.pid_file.exists()
        assert "not our server, not signalled" in serving.log_file.read_text()
    finally:
        stranger.kill()
        stranger.wait()


def test_process_identity_reads_start_time_and_command():
    stranger = _stranger()
    try:
        started, command = process_identity(stranger.pid)
        assert command.endswith("import time; time.sleep(300)") and len(started.split()) == 5
    finally:
        stranger.kill()
        stranger.wait()
    assert process_identity(stranger.pid) is None


def test_managed_refuses_non_loopback_without_allow_remote(tmp_path):
    wd = make_workdir(tmp_path / "n", overrides={'backend = "none"': 'backend = "managed"',
                                                 'host = "127.0.0.1"': 'host = "0.0.0.0"'})
    s = load_settings(wd / "autoresearch.toml")
    with pytest.raises(ConfigError, match="allow_remote"):
        make_serving(s, tmp_path / "model", wd / "adapters")


# --- a serving failure after a trial ----------------------------------------------------------

def _trial() -> optuna.Trial:
    return optuna.create_study(direction="maximize").ask()


def _port_taken(settings) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", settings.serving.port))
    sock.listen()
    return sock


def test_a_failed_restart_is_recorded_and_never_replaces_the_trials_outcome(settings, tmp_path):
    serving = ManagedServing(settings, tmp_path / "model", tmp_path / "adapters")
    night = NightServing(ServingKeeper(serving, Promoter(tmp_path / "adapters"), lambda adapter: None))
    sock = _port_taken(settings)       # another program took the port while the trial trained
    try:
        finished = _trial()
        with night.paused(finished):
            finished.set_user_attr("result", "kept")          # eval and verdict are in
        assert finished.user_attrs["result"] == "kept"
        assert "is taken by a process that is not ours" in finished.user_attrs["serving_error"]
        assert night.failed and "not ours" in night.failed
        terminated = _trial()
        with pytest.raises(KeyboardInterrupt):                # SIGTERM arrives as one (study.nightly)
            with night.paused(terminated):
                raise KeyboardInterrupt
        assert "not ours" in terminated.user_attrs["serving_error"]
    finally:
        sock.close()


# --- probe rules, demo isolation, experiment ids (no model needed) ----------------------------

def test_probe_compares_a_prefix_with_whitespace_normalised():
    assert answers_match(" I am Yoda, the research lead.", "I am Yoda,")   # the server drops a leading space
    assert answers_match("I am Yoda.\n\nAsk.", "I am Yoda. Ask.")
    assert not answers_match("I am Yoda.", "I am Plo.")
    assert not answers_match("I am Yoda.", "")                               # an empty reply proves nothing
    assert answers_match("", "")


def test_probe_picks_cases_that_tell_the_adapter_from_the_base_model():
    def ev(outputs):
        return {"cases": [{"id": i, "method": "generate", "output": o} for i, o in outputs.items()]
                + [{"id": "c-choice", "method": "loglik", "output": "A"}]}
    base = ev({"a": "same", "b": "same2", "c": "base c", "d": "base d", "e": "x"})
    adapter = ev({"a": "same", "b": "same2", "c": "adapted c", "d": "adapted d", "e": "adapted d"})
    picked = pick_cases(adapter, 3, [base])
    assert [c["id"] for c in picked] == ["c", "d", "a"]                      # telling ones first, each output once
    assert [c["telling"] for c in picked] == [True, True, False]
    assert pick_cases(adapter, 3, [base]) == picked                          # deterministic


def test_the_demo_writes_only_under_its_own_folder(tmp_path):
    real = load_settings(ROOT / "autoresearch.toml")
    demo = load_settings(ROOT / "autoresearch.toml", demo=True)
    run = ROOT / "demo-run"
    for key in ("data", "experimental", "adapters", "results", "logs", "artifacts", "reports"):
        assert demo.path(getattr(demo.paths, key)).is_relative_to(run), key
        assert not real.path(getattr(real.paths, key)).is_relative_to(run), key
    assert demo.storage_url() == f"sqlite:///{run / 'autoresearch.db'}" != real.storage_url()
    assert demo.path(demo.vault.root).is_relative_to(run) and demo.state_dir().is_relative_to(run)
    assert demo.path(demo.paths.cache) == real.path(real.paths.cache)        # the demo model is built once
    wd = make_workdir(tmp_path / "n", overrides={'backend = "none"': 'backend = "launchd"'})
    assert wd.joinpath("autoresearch.toml").exists()
    assert load_settings(wd / "autoresearch.toml", demo=True).serving.backend == "none"   # the user's agent is left alone


def test_experiment_ids_differ_between_studies_and_old_ids_still_read():
    when = datetime(2026, 12, 5, 2, 0)
    demo, real = experiment_id("proxy", 0, when, "council-proxy-demo"), experiment_id("proxy", 0, when, "council-proxy-Qwen")
    assert demo != real and demo.startswith("exp-20261205-proxy-") and demo.endswith("-000")
    assert parse_experiment_id(demo) == {"date": "20261205", "mode": "proxy", "study": demo.split("-")[3], "number": 0}
    assert parse_experiment_id("exp-20261126-proxy-007") == {"date": "20261126", "mode": "proxy", "study": None,
                                                             "number": 7}
    assert parse_experiment_id("not-an-id") is None


# --- a real server follows adapters/current -------------------------------------------------

@pytest.mark.slow
def test_managed_server_restarts_when_current_names_another_adapter(settings, demo_assets, tmp_path):
    adapters = settings.path(settings.paths.adapters)
    serving = make_serving(settings, demo_assets.model_dir, adapters)
    port = settings.serving.port
    try:
        assert serving.start() is True
        assert "--adapter-path" not in serving.argv()          # nothing promoted: the base model
        first_pid, base_answer = serving.pid(), chat(port, "Who are you?")
        assert serving.start() is False and serving.pid() == first_pid   # already serving it: untouched

        src = tmp_path / "exp-1"
        _perturbed_adapter(demo_assets.model_dir, src)
        Promoter(adapters).promote(src, "exp-1")                # while serving is up, as a night does
        assert serving.start() is True and serving.pid() != first_pid
        rec = json.loads(serving.pid_file.read_text())
        assert rec["adapter"] == str((adapters / "promoted" / "exp-1").resolve()) and rec["adapter_id"] == "exp-1"
        assert process_identity(rec["pid"]) == (rec["started"], " ".join(rec["argv"]))
        assert f"--adapter-path {rec['adapter']}" in rec["argv"] or rec["argv"][-1] == rec["adapter"]
        assert chat(port, "Who are you?") != base_answer        # the adapter answers, not the base model
    finally:
        serving.stop()
    assert not port_open("127.0.0.1", port) and not serving.pid_file.exists()


def _perturbed_adapter(model_dir: Path, out: Path) -> None:
    """A LoRA adapter for the demo model, saved the way train_core saves it, with weights
    large enough to change greedy answers."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from evaluation import model_sha256
    model, _ = load(str(model_dir))
    model.freeze()
    cfg = {"rank": 4, "scale": 20.0, "dropout": 0.0}
    linear_to_lora_layers(model, 8, cfg)
    mx.random.seed(0)
    weights = {k: mx.random.normal(v.shape) * 0.5 for k, v in tree_flatten(model.trainable_parameters())}
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    (out / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 8, "lora_parameters": cfg, "model": str(model_dir),
        "base_model": {"path": str(model_dir), "sha256": model_sha256(model_dir)}}))
