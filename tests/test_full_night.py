"""A whole full-mode night, as launchd starts it: `python -m study.nightly --mode full`
against a real sshd on 127.0.0.1, real rsync, real training on the "node" (this machine,
another folder), the eval here, and council-mlx as a real `mlx_lm server`.

Trial 0 trains on the node and lands in results.tsv with mode `full`; during trial 1 the
test kills sshd by its PID and freezes its sessions (a laptop leaving the coffee shop's
network): that trial is `failed:remote_lost`, serving comes back up, and the night's last
trial runs in proxy mode on this machine.
"""
from __future__ import annotations

import csv
import re
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from night_fixtures import make_workdir, stop_managed
from sshd_node import SshNode, free_port, have_sshd

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have_sshd(), reason="needs openssh-server and rsync (.ci/run installs them)")]


def full_night_workdir(tmp: Path, demo_assets, node: SshNode, port: int) -> Path:
    model = str(Path(demo_assets.model_dir).resolve())
    return make_workdir(tmp / "night", overrides={
        # both modes train the demo model: the node's copy is this machine's folder
        'model = "~/models/Qwen3.5-9B-4bit"': f'model = "{model}"',
        'model = "~/models/Qwen3.5-35B-4bit"': f'model = "{model}"',
        'host = ""                # ssh host': f'host = "{node.alias}"                # ssh host',
        'remote_python = "python3"': f'remote_python = "{sys.executable}"',
        'remote_workdir = "~/council-train"': f'remote_workdir = "{tmp / "node"}"',
        'ssh_config = ""          # ssh -F file; empty: ~/.ssh/config': f'ssh_config = "{node.ssh_config}"',
        # proxy trains 4 s; full trains 20 s, long enough to lose the node mid-training
        "budget_s = 900 ": "budget_s = 4 ", "budget_s = 1800": "budget_s = 20",
        "max_tokens = 32": "max_tokens = 8",
        'sessions = "sessions"': f'sessions = "{Path(demo_assets.sessions_dir).resolve()}"',
        'root = "~/.sanctum/memory"': f'root = "{tmp / "vault"}"',
        'backend = "none"': 'backend = "managed"', "port = 8765": f"port = {port}",
    })


class KillSecondTrial(threading.Thread):
    """Watches the night's per-trial logs; at the second trial's first training step,
    kills sshd and freezes its sessions."""

    def __init__(self, logs: Path, node: SshNode):
        super().__init__(daemon=True)
        self.logs, self.node = logs, node
        self.order: list[Path] = []
        self.killed: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and self.killed is None:
            for f in sorted(self.logs.glob("*/*.log")):
                if f not in self.order:
                    self.order.append(f)
            if len(self.order) >= 2 and re.search(r"^\S+ step \d+:", self.order[1].read_text(), re.M):
                self.node.kill(freeze_sessions=True)
                self.killed = self.order[1].stem
            time.sleep(0.1)


def test_a_full_night_loses_its_node_and_ends_in_proxy(tmp_path, demo_assets):
    port = free_port()
    with SshNode(tmp_path / "sshd") as node:
        wd = full_night_workdir(tmp_path, demo_assets, node, port)
        watcher = KillSecondTrial(wd / "logs", node)
        watcher.start()
        deadline = (datetime.now() + timedelta(minutes=40)).strftime("%H:%M")
        try:
            out = subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(wd / "autoresearch.toml"),
                                  "--mode", "full", "--max-trials", "3", "--deadline", deadline, "--no-progress"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=900)
        finally:
            watcher.done.set()
            watcher.join()
        try:
            assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
            assert watcher.killed, "the second trial never reached a training step"

            rows = list(csv.DictReader((wd / "results.tsv").open(), delimiter="\t"))
            by_id = {r["experiment_id"]: r for r in rows}
            first, lost = (by_id[f.stem] for f in watcher.order[:2])
            # Trial 0: data over, trained on the node, adapter back (sha256 checked), evaluated here.
            assert first["mode"] == "full" and not first["result"].startswith("failed"), first
            assert float(first["score"]) > 0
            adapter = wd / "adapters-experimental" / first["experiment_id"]
            assert (adapter / "adapters.safetensors").is_file() and (adapter / "eval_results.json").is_file()
            # Trial 1: the node went away mid-training.
            assert lost["mode"] == "full" and lost["result"] == "failed:remote_lost", lost
            # The rest of the night in proxy mode, on this machine's model and study.
            rest = [r for r in rows if r["mode"] == "proxy"]
            assert len(rest) == 1 and not rest[0]["result"].startswith("failed"), rows
            assert "the night goes on in proxy mode" in out.stdout
            assert len(rows) == 3

            # The proxy trial says why it ran there.
            import optuna
            storage = f"sqlite:///{wd / 'autoresearch.db'}"
            names = optuna.get_all_study_names(storage)
            proxy = optuna.load_study(study_name=next(n for n in names if n.startswith("council-proxy-")),
                                      storage=storage)
            [t] = proxy.trials
            assert t.user_attrs["mode_reason"].startswith("training node lost in trial")

            # council-mlx: paused for each trial (the lost one included) and up at the end.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                assert resp.status == 200
            log = (wd / "logs" / "council-mlx.log").read_text()
            assert log.count("--- council-autoresearch: stopped") >= 3
        finally:
            stop_managed(wd)
