"""Helpers of the fault-injection suite (tests/faults): real `python -m study.nightly --demo`
processes on private workdirs, and what a test needs to inject a fault into one and look at
it after. Fixtures are in conftest.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from night_fixtures import link_demo_cache, make_workdir
from netutil import free_port, health

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_S = float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20"))
STUDY = "council-proxy-demo"
# Secrets a careless night could copy into a log, a report or an artifact.
PLANTED = {"OPENAI_API_KEY": "sk-PLANTED-0d1f2e3c4b5a69788796a5b4c3d2e1f0",
           "ANTHROPIC_API_KEY": "sk-ant-PLANTED-a1b2c3d4e5f60718293a4b5c6d7e8f90",
           "HF_TOKEN": "hf_PLANTEDq8w7e6r5t4y3u2i1o0p9a8s7d6f5g4"}


# --- processes --------------------------------------------------------------------------

def night_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **PLANTED, "PYTHONUNBUFFERED": "1", **(extra or {})}


def night_argv(wd: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "study.nightly", "--demo", "--config", str(wd / "autoresearch.toml"),
            "--no-progress", *args]


def wait_for_quiet_machine(timeout: float = 600) -> None:
    """The night's guard refuses to start beside another training job (exit 4); on a shared
    machine another test's `train_core` may be running: wait for it rather than flake."""
    from study.guard import running_training_jobs
    assert wait_until(lambda: not running_training_jobs(), timeout, 1.0), running_training_jobs()


def start_night(wd: Path, *args: str, out: Path) -> subprocess.Popen:
    """A nightly in the background, its stdout and stderr in `out` (outside the workdir)."""
    wait_for_quiet_machine()
    fh = open(out, "wb")
    try:
        return subprocess.Popen(night_argv(wd, *args), cwd=ROOT, env=night_env(), stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        fh.close()


def run_night(wd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    wait_for_quiet_machine()
    return subprocess.run(night_argv(wd, *args), cwd=ROOT, env=night_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def processes() -> list[tuple[int, int, str, str]]:
    """(pid, ppid, state, command) of every process (`ps` reads the same on Linux and macOS)."""
    out = subprocess.run(["ps", "-axww", "-o", "pid=,ppid=,stat=,command="], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[0]), int(parts[1]), parts[2], parts[3]))
    return rows


def training_children(parent: int) -> list[int]:
    """Live `python -m train_core` processes started by `parent`."""
    return [pid for pid, ppid, stat, cmd in processes()
            if ppid == parent and "-m train_core" in cmd and not stat.startswith("Z")]


def alive(pid: int) -> bool:
    """Running, not a zombie (a killed child may stay unreaped under a container's init)."""
    return any(p == pid and not stat.startswith("Z") for p, _, stat, _ in processes())


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def trial_log_lines(wd: Path) -> list[str]:
    lines = []
    for f in sorted((wd / "logs").glob("*/exp-*.log")):
        lines += f.read_text(errors="replace").splitlines()
    return lines


def wait_for_training(wd: Path, proc: subprocess.Popen, timeout: float = 300) -> list[int]:
    """Block until the night's trial is inside its training loop (the child reported its
    first validation loss); returns the training child pids."""
    found: list[int] = []

    def training() -> bool:
        assert proc.poll() is None, f"the night exited ({proc.returncode}) before training"
        found[:] = training_children(proc.pid)
        return bool(found) and any("val loss" in line for line in trial_log_lines(wd))

    assert wait_until(training, timeout, 0.1), "training never started"
    return found


# --- serving ----------------------------------------------------------------------------

def managed_serving(port: int) -> dict[str, str]:
    """Config overrides for a real `mlx_lm server` run by the night on 127.0.0.1:port."""
    return {'backend = "none"': 'backend = "managed"', "port = 8765": f"port = {port}"}


def stop_server(wd: Path) -> None:
    pid_file = wd / "cache" / "council-mlx.pid"
    try:
        pid = int(json.loads(pid_file.read_text())["pid"])   # study.serving's record
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the study and its exports ------------------------------------------------------------

def load_study(wd: Path):
    import optuna
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{wd / 'autoresearch.db'}")


def read_results(wd: Path):
    import pandas as pd
    return pd.read_csv(wd / "results.tsv", sep="\t")


# --- workdirs ---------------------------------------------------------------------------

def shared_base_eval(demo_assets) -> Path:
    """The demo base model's eval_results.json, as the night's BaselineKeeper computes it,
    cached beside the demo build and keyed by everything that changes it."""
    from common.atomic import sha256_dir, sha256_file
    from evaluation import EvalConfig, run_eval, write_eval_results
    from evaluation.results import model_sha256

    model = Path(demo_assets.model_dir)
    key = hashlib.sha256("|".join((model_sha256(model), sha256_file(ROOT / "council.yaml"),
                                   sha256_dir(ROOT / "evaluation" / "suite", "*.yaml"),
                                   "max_tokens=32,seed=0")).encode()).hexdigest()[:16]
    path = model.parent.parent / "faults-baseline" / key / "eval_results.json"
    if not path.exists():
        results = run_eval(EvalConfig(model=str(model), adapter=None, council_path=str(ROOT / "council.yaml"),
                                      max_tokens=32, seed=0), progress=False)
        write_eval_results(path, results)
    return path


def make_fault_workdir(path: Path, demo_assets, base_eval: Path, *, budget_s: float = 4,
                       overrides: dict[str, str] | None = None) -> Path:
    """A private copy of the configuration with a tiny demo budget, the demo model linked in
    and the base model's eval already in its cache (the night would spend ~45 s on it)."""
    from evaluation.results import model_sha256

    wd = make_workdir(path, pretrain_s=PRETRAIN_S,
                      overrides={"budget_s = 240\n": f"budget_s = {budget_s:g}\n",
                                 "iters_scale = 0.5": "iters_scale = 0.02", **(overrides or {})})
    link_demo_cache(wd, demo_assets)
    dest = wd / "cache" / "baseline" / model_sha256(demo_assets.model_dir)[:16]
    dest.mkdir(parents=True)
    for f in (base_eval, base_eval.with_name(base_eval.name + ".sha256")):
        shutil.copy(f, dest / f.name)
    return wd


def set_budget(wd: Path, budget_s: float) -> None:
    """Change the demo's training budget between two nights of one workdir."""
    import re
    cfg = wd / "autoresearch.toml"
    # The [demo] table's own line: its lines up to the next header (comments may hold "[...]").
    text, n = re.subn(r"(?m)^(\[demo\]\n(?:(?!\[)[^\n]*\n)*?budget_s = )[0-9.]+$", rf"\g<1>{budget_s:g}",
                      cfg.read_text())
    assert n == 1
    cfg.write_text(text)


def no_warm_start(wd: Path) -> None:
    """Only the baseline config is enqueued, so a retried trial is the next one to run."""
    import yaml
    path = wd / "search_space.yaml"
    data = yaml.safe_load(path.read_text())
    data["warm_start"] = []
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def planted_hits(root: Path) -> list[str]:
    """Files under root holding any planted secret (bytes, so binary files count too)."""
    needles = [v.encode() for v in PLANTED.values()]
    hits = []
    for dirpath, _, files in os.walk(root):   # no symlinks followed: the shared demo is not the night's
        for name in files:
            p = Path(dirpath, name)
            if p.is_symlink():
                continue
            data = p.read_bytes()
            hits += [f"{p}: {n.decode()[:12]}…" for n in needles if n in data]
    return hits
