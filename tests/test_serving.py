"""council-mlx served by a real `mlx_lm server` on 127.0.0.1: stop means gone, start means
healthy, and after a promotion the server answers with adapters/current."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from common.errors import ConfigError
from night_fixtures import make_workdir
from study.config import load_settings
from study.promoter import Promoter
from study.serving import ManagedServing, make_serving, port_open
from netutil import free_port

pytestmark = pytest.mark.slow


def chat(port: int, text: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture
def settings(tmp_path):
    port = free_port()
    wd = make_workdir(tmp_path / "night", overrides={'backend = "none"': 'backend = "managed"',
                                                     "port = 8765": f"port = {port}"})
    return load_settings(wd / "autoresearch.toml")


def test_managed_stop_start_and_promoted_adapter(settings, demo_assets, tmp_path):
    adapters = settings.path(settings.paths.adapters)
    serving = make_serving(settings, demo_assets.model_dir, adapters)
    assert isinstance(serving, ManagedServing)
    port = settings.serving.port
    try:
        serving.start()
        assert serving.is_up() and serving.pid() is not None
        assert "--adapter-path" not in serving.argv()          # nothing promoted: the base model
        first_pid = serving.pid()
        assert chat(port, "hi")["choices"][0]["message"]["role"] == "assistant"

        with serving.paused():
            assert not port_open("127.0.0.1", port)             # really gone while "training"
            assert serving.pid() is None
            # A promotion happens while serving is paused.
            src = tmp_path / "exp-1"
            _fake_trained_adapter(demo_assets.model_dir, src)
            Promoter(adapters).promote(src, "exp-1")
        assert serving.is_up() and serving.pid() != first_pid
        argv = serving.argv()
        assert argv[argv.index("--adapter-path") + 1] == str(adapters / "current")
        # The running server's own command line (ps works on macOS and Linux alike).
        cmdline = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(serving.pid())], capture_output=True,
                                 text=True).stdout
        assert f"--adapter-path {adapters / 'current'}" in cmdline
        reply = chat(port, "Who are you?")
        assert reply["choices"][0]["message"]["content"] is not None
    finally:
        serving.stop()
    assert not port_open("127.0.0.1", port)


def test_paused_restarts_even_when_the_trial_raises(settings, demo_assets):
    serving = make_serving(settings, demo_assets.model_dir, settings.path(settings.paths.adapters))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with serving.paused():
                raise RuntimeError("boom")
        assert serving.is_up()
    finally:
        serving.stop()


def test_managed_refuses_non_loopback_without_allow_remote(tmp_path, demo_assets):
    wd = make_workdir(tmp_path / "n", overrides={'backend = "none"': 'backend = "managed"',
                                                 'host = "127.0.0.1"': 'host = "0.0.0.0"'})
    s = load_settings(wd / "autoresearch.toml")
    with pytest.raises(ConfigError, match="allow_remote"):
        make_serving(s, demo_assets.model_dir, wd / "adapters")


def _fake_trained_adapter(model_dir: Path, out: Path) -> None:
    """A real (untrained) LoRA adapter for the demo model, saved the way train_core saves it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers
    model, _ = load(str(model_dir))
    model.freeze()
    cfg = {"rank": 4, "scale": 2.0, "dropout": 0.0}
    linear_to_lora_layers(model, 4, cfg)
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (out / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "num_layers": 4,
                                                         "lora_parameters": cfg, "model": str(model_dir)}))
