"""train_core's event protocol and the parent-side runner: real child processes, real
mlx-lm training on the demo model (a few steps each)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.atomic import sha256_dir
from common.errors import ConfigError
from common.procs import pid_alive
from train_core import (OutOfMemory, RemoteLost, StopTraining, TrainCallback, TrainingTimeout,
                        run_training)
from train_core.child import ChildFailed, child_env
from train_core.events import decode, decode_loss, encode, encode_loss, parse_command, stop_command

from sshd_node import children
from train_data import sample_data, small_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(demo_assets) -> Path:
    return Path(demo_assets.model_dir)


@pytest.fixture(scope="module")
def data_dir(demo_assets, tmp_path_factory) -> Path:
    return sample_data(demo_assets, tmp_path_factory.mktemp("data"))


class Recorder(TrainCallback):
    def __init__(self, stop_at: int | None = None):
        self.events: list[tuple] = []
        self.stop_at = stop_at
        self.models: list = []

    def on_start(self, ctx):
        self.events.append(("start", ctx.num_layers_effective))
        self.models.append(ctx.model)

    def on_train_loss(self, step, loss, ctx):
        self.events.append(("train", step))
        if step == self.stop_at:
            raise StopTraining("enough said")

    def on_val_loss(self, step, loss, ctx):
        self.events.append(("val", step))

    def on_end(self, result):
        self.events.append(("end", result.stopped_by))


def test_protocol_lines_round_trip():
    line = encode("val_loss", step=3, loss=encode_loss(math.nan), elapsed_s=1.0)
    ev = decode(line.encode())
    assert ev["event"] == "val_loss" and math.isnan(decode_loss(ev["loss"]))
    assert decode_loss(encode_loss(-math.inf)) == -math.inf and decode_loss(2.5) == 2.5
    assert decode(b"Loading model...") is None and decode(b'{"event": "nope"}') is None
    # A reason cannot smuggle a second command onto the line.
    assert stop_command("pruned\nstop other") == b"stop pruned stop other\n"
    assert parse_command("stop pruned stop other\n") == "pruned stop other"
    assert parse_command("stop\n") == "stopped" and parse_command("status\n") is None


def test_cli_events_stream_and_parent_gone(model_dir, data_dir, tmp_path):
    """The raw protocol: every stdout line is an event; closing stdin (the parent or its
    ssh connection gone) stops the run at the next step, and writes no adapter: nobody
    is left to evaluate it."""
    spec = small_spec(model_dir, data_dir, tmp_path / "a", iters=30, val_every=2)
    spec.to_json(tmp_path / "spec.json")
    proc = subprocess.Popen([sys.executable, "-m", "train_core", "--spec", str(tmp_path / "spec.json"),
                             "--events", "--quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=child_env())
    events = []
    for raw in proc.stdout:
        events.append(json.loads(raw))  # not one stray line: every line parses
        if events[-1]["event"] == "train_loss" and events[-1]["step"] == 1:
            proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[1] == "val_loss" and kinds[-1] == "end"
    assert events[0]["num_layers_effective"] == 2 and events[0]["trainable_params"] > 0
    result = events[-1]["result"]
    assert result["stopped_by"] == "callback:parent_gone" and result["iters_done"] < 30
    assert result["adapter_sha256"] == "" and not (tmp_path / "a").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temp adapter folder was left"


def test_parent_callbacks_see_events_and_stop_the_child(model_dir, data_dir, tmp_path):
    rec = Recorder(stop_at=2)
    t0 = time.monotonic()
    result = run_training(small_spec(model_dir, data_dir, tmp_path / "a", iters=20), [rec], progress=True)
    assert time.monotonic() - t0 < 60
    # Stopped like an in-process StopTraining: at a step boundary, adapter written.
    assert result.stopped_by == "callback:enough said"
    assert 2 <= result.iters_done <= 3   # the child may have begun step 3 when the line arrived
    assert result.adapter_sha256 == sha256_dir(tmp_path / "a", "*.safetensors")
    assert rec.events[:4] == [("start", 2), ("val", 0), ("train", 1), ("train", 2)]
    assert ("train", 3) not in rec.events  # no step hooks after the stop, as in process
    assert rec.events[-1] == ("end", "callback:enough said")
    assert rec.models == [None]  # the model stays in the child


def test_bad_input_in_the_child_is_a_config_error(data_dir, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ConfigError, match="not a model folder"):
        run_training(small_spec(tmp_path / "not-a-model", data_dir, tmp_path / "a"), progress=False)


def test_hard_timeout_kills_the_child(model_dir, data_dir, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(TrainingTimeout) as info:
        run_training(small_spec(model_dir, data_dir, tmp_path / "a", iters=500), timeout_s=1.5, progress=False)
    assert time.monotonic() - t0 < 10
    assert "hard limit" in str(info.value) and info.value.result.stopped_by == "timeout"
    assert not any(_is_train_core(p) for p in children(os.getpid()))


def test_interrupt_in_the_parent_kills_the_child_and_propagates(model_dir, data_dir, tmp_path):
    seen: list[int] = []

    class Interrupt(TrainCallback):
        def on_train_loss(self, step, loss, ctx):
            seen.extend(p for p in children(os.getpid()) if _is_train_core(p))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(small_spec(model_dir, data_dir, tmp_path / "a", iters=500), [Interrupt()], progress=False)
    assert seen, "the child was running when the interrupt came"
    assert not any(pid_alive(pid) for pid in seen)


def test_exit_codes_map_to_errors(model_dir, tmp_path):
    """A death by signal reported by a shell (ssh runs one on the node) reads as OOM; the
    transport's own failure (ssh: 255) as RemoteLost; anything else as ChildFailed."""
    spec = small_spec(model_dir, tmp_path, tmp_path / "a")
    segv = ["sh", "-c", "sh -c 'kill -SEGV $$'; exit $?"]
    with pytest.raises(OutOfMemory, match="SIGSEGV") as info:
        run_training(spec, argv=segv, progress=False)
    assert info.value.result.stopped_by == "oom" and info.value.result.adapter_sha256 == ""
    with pytest.raises(RemoteLost, match="exit 255.*gone"):
        run_training(spec, argv=["sh", "-c", "echo gone >&2; exit 255"], progress=False, lost_exit_codes=(255,))
    with pytest.raises(ChildFailed, match="exited with 7"):
        run_training(spec, argv=["sh", "-c", "exit 7"], progress=False)


def _is_train_core(pid: int) -> bool:
    cmd = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True).stdout
    return "train_core" in cmd
