"""Full mode against a real sshd on 127.0.0.1 (keys made here), real rsync, real training
on the demo model on the "node" (this machine, another folder), real eval here."""
from __future__ import annotations

import contextlib
import csv
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from common.errors import ConfigError
from objective import TrialContext, TrialFailed, objective
from study.modes import choose_mode
from study.remote import Node, RemoteTrainer, remote_lost, remote_path, ssh_argv
from study.remote_eval import RemoteEvaluator
from study.results import export_results

from sshd_node import SshNode, keygen, free_port, have_sshd
from train_data import sample_data, small_spec

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have_sshd(), reason="needs openssh-server and rsync (.ci/run installs them)")]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with SshNode(tmp_path_factory.mktemp("sshd")) as node:
        yield node


@pytest.fixture(scope="module")
def data_dir(demo_assets, tmp_path_factory) -> Path:
    return sample_data(demo_assets, tmp_path_factory.mktemp("prepared") / "0123abcd")


def make_node(sshd: SshNode, workdir: Path, model: Path, **kw) -> Node:
    # The node's interpreter is this venv's; it finds train_core only in the synced copy.
    return Node(host=sshd.alias, model=str(model), python=sys.executable, workdir=str(workdir),
                ssh_config=str(sshd.ssh_config), **kw)


class Serving:
    """Counts stops and starts, as the serving layer's paused() does around training."""

    def __init__(self):
        self.up, self.stops = True, 0

    @contextlib.contextmanager
    def paused(self, trial):
        self.up, self.stops = False, self.stops + 1
        try:
            yield
        finally:
            self.up = True


def suggest_fixed(iters: int):
    def suggest(trial: optuna.Trial) -> dict:
        space = {"NUM_LAYERS": 2, "LORA_RANK": 4, "LORA_ALPHA": 8.0, "DROPOUT": 0.0, "LEARNING_RATE": 1e-4,
                 "ITERS": iters, "GRAD_ACCUM": 1, "MAX_SEQ_LENGTH": 256, "DATA_MIX_RATIO": 0.5}
        return {k: trial.suggest_categorical(k, [v]) for k, v in space.items()}
    return suggest


def trial_context(tmp: Path, model: Path, data_dir: Path, run_training, serving: Serving, iters: int,
                  log=lambda trial, line: None, **kw) -> TrialContext:
    return TrialContext(
        mode="full", model_dir=model, model_name="demo", suggest=suggest_fixed(iters),
        prepare_data=lambda ratio: SimpleNamespace(dir=data_dir, hash=data_dir.name),
        experimental_root=tmp / "adapters-experimental", council_path=REPO / "council.yaml",
        budget_s=lambda: 60.0, baseline=lambda: None,
        on_verdict=lambda trial, verdict, evaluated, adapter_dir: verdict.result,
        train_defaults=dict(batch_size=2, val_every=2, val_batches=1, lr_schedule="constant"),
        eval_max_tokens=4, prune=False, pause_serving=serving.paused, progress=False, log=log,
        run_training=run_training, **kw,
    )


# ---------------------------------------------------------------- mode detection

def test_reachable_node_is_full_mode(sshd):
    choice = choose_mode("auto", sshd.alias, str(sshd.ssh_config))
    assert (choice.mode, choice.reason) == ("full", f"ssh {sshd.alias}: ok")


def test_unreachable_node_is_proxy_within_5_s(sshd, tmp_path):
    closed = sshd.write_client_config(free_port(), path=tmp_path / "closed_config")
    t0 = time.monotonic()
    choice = choose_mode("full", sshd.alias, str(closed))
    assert time.monotonic() - t0 < 5
    assert choice.mode == "proxy" and "unreachable" in choice.reason and "refused" in choice.reason


def test_host_keys_are_checked_and_accept_new_pins_a_first_key(sshd, tmp_path):
    keygen(tmp_path / "other")
    other = (tmp_path / "other.pub").read_text().split()
    (tmp_path / "wrong_hosts").write_text(f"{sshd.alias} {other[0]} {other[1]}\n")
    wrong = sshd.write_client_config(sshd.port, path=tmp_path / "wrong", known_hosts=tmp_path / "wrong_hosts")
    choice = choose_mode("auto", sshd.alias, str(wrong), accept_new=True)  # a changed key is never accepted
    assert choice.mode == "proxy" and "host key" in choice.reason.lower()

    fresh = sshd.write_client_config(sshd.port, path=tmp_path / "fresh", known_hosts=tmp_path / "fresh_hosts")
    assert choose_mode("auto", sshd.alias, str(fresh)).mode == "proxy"   # unknown key, strict
    assert choose_mode("auto", sshd.alias, str(fresh), accept_new=True).mode == "full"
    assert sshd.alias in (tmp_path / "fresh_hosts").read_text()          # pinned from now on


def test_hosts_and_paths_cannot_inject(tmp_path):
    with pytest.raises(ConfigError, match="not a host name"):
        Node(host="-oProxyCommand=touch /tmp/x", model="m")
    assert choose_mode("full", "-oProxyCommand=x").mode == "proxy"
    assert remote_path("~/council train") == "\"$HOME\"/'council train'"
    assert remote_path("/a/$(reboot)") == "'/a/$(reboot)'"
    argv = ssh_argv(Node(host="node", model="m"), "echo ok")
    assert argv[-3:] == ["--", "node", "echo ok"] and "StrictHostKeyChecking=yes" in argv


# ---------------------------------------------------------------- the remote run

def test_full_mode_trial_end_to_end(sshd, demo_assets, data_dir, tmp_path):
    model = Path(demo_assets.model_dir)
    trainer = RemoteTrainer(make_node(sshd, tmp_path / "node", model))
    serving = Serving()
    ctx = trial_context(tmp_path, model, data_dir, trainer, serving, iters=4)
    study = optuna.create_study(direction="maximize", study_name="council-full-demo")
    study.optimize(lambda t: objective(t, ctx), n_trials=1)

    t = study.trials[0]
    ua = t.user_attrs
    assert t.state == optuna.trial.TrialState.COMPLETE, ua.get("fail_detail")
    assert ua["mode"] == "full" and ua["stopped_by"] == "iters" and ua["iters_done"] == 4
    adapter = tmp_path / "adapters-experimental" / ua["experiment_id"]
    # Came back, checked against the node's sha256, evaluated here.
    assert (adapter / "adapters.safetensors").is_file() and (adapter / "eval_results.json").is_file()
    node = tmp_path / "node"
    assert (node / "code" / "train_core" / "events.py").is_file()      # the node got the code
    assert (node / "data" / f"{data_dir.name}-{_key_suffix(data_dir)}" / "train.jsonl").is_file()
    assert list((node / "adapters").iterdir()) == []                    # removed once fetched
    assert serving.stops == 1 and serving.up
    timings = trainer.timings
    print(f"\nremote trial timings (s): {timings}")
    assert set(timings) == {"layout_s", "push_s", "train_s", "fetch_s", "cleanup_s"}

    rows = tmp_path / "results.tsv"
    export_results([study], rows)
    row = next(csv.DictReader(rows.open(), delimiter="\t"))
    assert row["mode"] == "full" and row["experiment_id"] == ua["experiment_id"]


def _key_suffix(data_dir: Path) -> str:
    import hashlib
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]


def test_leftovers_of_a_lost_trial_are_swept_on_the_node(sshd, demo_assets, tmp_path):
    """A connection lost mid-trial leaves the node's adapter (and spec) behind; the next
    night's first contact removes what is older than ABANDONED_MIN, nothing younger."""
    import os
    from study.remote import ABANDONED_MIN
    node = tmp_path / "node"
    old_adapter, old_spec, young = node / "adapters" / "proxy-x-1", node / "specs" / "proxy-x-1.json", node / "eval" / "y"
    for d in (old_adapter, young):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "adapters.safetensors").write_bytes(b"x")
    old_spec.parent.mkdir(parents=True)
    old_spec.write_text("{}")
    past = time.time() - (ABANDONED_MIN + 5) * 60
    for p in (old_adapter, old_spec):
        os.utime(p, (past, past))
    RemoteTrainer(make_node(sshd, node, Path(demo_assets.model_dir))).layout()
    assert not old_adapter.exists() and not old_spec.exists()
    assert (young / "sub" / "adapters.safetensors").is_file()


def test_push_sends_only_what_changed(sshd, demo_assets, data_dir, tmp_path):
    model = Path(demo_assets.model_dir)
    trainer = RemoteTrainer(make_node(sshd, tmp_path / "node", model))
    lay = trainer.layout()
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"{split}.jsonl").write_bytes((data_dir / f"{split}.jsonl").read_bytes())
    spec = small_spec(model, data, tmp_path / "exp-1")
    remote, key, name = trainer.remote_spec(spec, lay)

    def inodes() -> dict[str, int]:
        root = tmp_path / "node"
        return {str(p.relative_to(root)): p.stat().st_ino for p in root.rglob("*") if p.is_file()}

    trainer.push(spec, remote, key, name, lay)
    first = inodes()
    trainer.push(spec, remote, key, name, lay)
    assert inodes() == first   # rsync replaces a file it sends: nothing was sent
    with (data / "valid.jsonl").open("a") as fh:
        fh.write((data_dir / "valid.jsonl").read_text().splitlines()[0] + "\n")
    trainer.push(spec, remote, key, name, lay)
    changed = {k for k, v in inodes().items() if first.get(k) != v}
    assert changed == {f"data/{key}/valid.jsonl"}


def test_connection_lost_mid_training_is_remote_lost(demo_assets, data_dir, tmp_path):
    """sshd is killed by its PID and its open connection frozen (a laptop gone from the
    network sends nothing): ServerAlive notices, the trial is failed:remote_lost, and
    serving is back up."""
    model = Path(demo_assets.model_dir)
    with SshNode(tmp_path / "sshd") as sshd:
        trainer = RemoteTrainer(make_node(sshd, tmp_path / "node", model, alive_interval_s=1, alive_count_max=2))
        serving = Serving()
        killed_at: list[float] = []

        def log(trial, line: str) -> None:
            if line.startswith("step 2:") and not killed_at:
                assert sshd.kill(freeze_sessions=True), "the training connection had processes"
                killed_at.append(time.monotonic())

        ctx = trial_context(tmp_path, model, data_dir, trainer, serving, iters=400, log=log)
        study = optuna.create_study(direction="maximize")
        study.optimize(lambda t: objective(t, ctx), n_trials=1, catch=(TrialFailed,))
        lost_after = time.monotonic() - killed_at[0]

    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.FAIL
    assert t.user_attrs["result"] == "failed:remote_lost" and remote_lost(t)
    assert "connection to the training node lost" in t.user_attrs["reasons"][0]
    assert lost_after < 8, f"RemoteLost took {lost_after:.1f} s"
    assert serving.stops == 1 and serving.up
    print(f"\nconnection loss noticed after {lost_after:.1f} s")


def test_proxy_fallback_plan_switches_mode_model_and_study(tmp_path):
    import argparse
    import dataclasses

    from study.modes import ModeChoice
    from study.night import plan
    from study.remote import proxy_fallback

    args = argparse.Namespace(config=str(REPO / "autoresearch.toml"), demo=True, dry_run=True, mode="proxy",
                              full=False, skip_prepare=False, no_progress=True, deadline=None, max_trials=None)
    proxy = plan(args)
    full = dataclasses.replace(proxy, mode=ModeChoice("full", "ssh trainnode: ok"), model="/node/big",
                               model_label="big", study_name="council-full-big")
    back = proxy_fallback(full, "training node lost in trial 7")
    assert (back.mode.mode, back.mode.reason) == ("proxy", "training node lost in trial 7")
    assert (back.model, back.study_name) == (proxy.model, proxy.study_name)
    assert back.adapters_root == proxy.adapters_root != full.adapters_root


# ---------------------------------------------------------------- the eval on the node

def test_eval_on_the_node_when_the_model_is_only_there(sshd, demo_assets, data_dir, tmp_path):
    """eval_on = "node": trained and evaluated on the node's model; this machine's model
    path does not exist, so nothing here could have loaded it. Only the results come back."""
    import json
    import shutil

    from evaluation import EvalConfig
    from evaluation.results import model_sha256

    node_model = tmp_path / "node-model"
    shutil.copytree(demo_assets.model_dir, node_model)
    trainer = RemoteTrainer(make_node(sshd, tmp_path / "node", node_model))
    evaluator = RemoteEvaluator(make_node(sshd, tmp_path / "node", node_model))
    nowhere = tmp_path / "not-on-this-machine"
    assert evaluator.model_sha256(nowhere) == model_sha256(demo_assets.model_dir)   # same bytes, hashed there
    assert evaluator.canary(EvalConfig(model=str(nowhere), council_path=str(REPO / "council.yaml"),
                                       max_tokens=4)) == []

    ctx = trial_context(tmp_path, nowhere, data_dir, trainer, Serving(), iters=4, run_eval=evaluator)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: objective(t, ctx), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("fail_detail")
    results = json.loads((Path(t.user_attrs["eval_results"])).read_text())
    assert results["repro"]["base_model"]["path"] == str(node_model)     # the node's copy
    assert results["repro"]["adapter"]["path"].startswith(str(tmp_path / "node" / "eval"))
    assert 0 < results["overall"] <= 1 and t.value == results["overall"]
    assert list((tmp_path / "node" / "eval").iterdir()) == []              # removed once fetched
    assert set(evaluator.timings) == {"push_s", "eval_s", "fetch_s"}

    broken = tmp_path / "broken-council.yaml"
    broken.write_text("agents: [\n")
    # The eval's own one-line error, about the council.yaml the node got from broken-council.yaml.
    with pytest.raises(ConfigError, match=f"eval on {sshd.alias}: error: .*council.yaml: YAML syntax error"):
        evaluator(EvalConfig(model=str(nowhere), council_path=str(broken), max_tokens=4))


def test_eval_on_node_is_checked_against_its_settings(sshd, tmp_path):
    import argparse

    from study.config import load_settings
    from study.night import plan
    from night_fixtures import make_workdir

    alone = make_workdir(tmp_path / "alone", overrides={'eval_on = "local"': 'eval_on = "node"'})
    with pytest.raises(ConfigError, match="eval_on.*needs a training node"):
        load_settings(alone / "autoresearch.toml")

    wd = make_workdir(tmp_path / "managed", overrides={
        'eval_on = "local"': 'eval_on = "node"', 'backend = "none"': 'backend = "managed"',
        'host = ""                # ssh host': f'host = "{sshd.alias}"                # ssh host',
        'ssh_config = ""          # ssh -F file; empty: ~/.ssh/config': f'ssh_config = "{sshd.ssh_config}"'})
    args = argparse.Namespace(config=str(wd / "autoresearch.toml"), demo=False, dry_run=True, mode="full",
                              full=False, skip_prepare=False, no_progress=True, deadline=None, max_trials=None)
    with pytest.raises(ConfigError) as exc:
        plan(args)
    assert exc.value.key == "serving.backend" and "only on the node" in str(exc.value)
