"""Shared by the night benchmarks: a private workdir with the demo build linked in, a demo
night run in this process by study.runner.NightRunner (what `python -m study.nightly --demo`
runs), and a portable resident-memory reading.

In process, not `python -m study.nightly`: the nightly's guard refuses to start while any
`python -m train_core` runs on the machine, and other people train on these machines.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_build() -> Path:
    """The shared demo build (cached in ROOT/.cache, as `python -m study.nightly --demo` uses it)."""
    from demo import ensure_demo
    return Path(ensure_demo(ROOT / ".cache", ROOT / "council.yaml", pretrain_seconds=100).model_dir).parent


def make_workdir(wd: Path, replace: dict[str, str]) -> Path:
    """The project's configuration with `replace` applied to autoresearch.toml (each old
    text must be there), a private cache (lock, pid file, baseline eval) and the demo build
    linked in."""
    wd.mkdir(parents=True, exist_ok=True)
    for name in ("search_space.yaml", "council.yaml"):
        shutil.copy(ROOT / name, wd / name)
    text = (ROOT / "autoresearch.toml").read_text()
    for old, new in {'cache = ".cache"': 'cache = "cache"', **replace}.items():
        assert old in text, old
        text = text.replace(old, new)
    (wd / "autoresearch.toml").write_text(text)
    built = demo_build()
    (wd / "cache").mkdir(exist_ok=True)
    if not (wd / "cache" / built.name).exists():
        os.symlink(built, wd / "cache" / built.name)
    return wd


def copy_base_eval(wd: Path, base: Path) -> None:
    """A precomputed base-model eval (cache/baseline/<sha>/eval_results.json and its
    checksum trailer) into wd's cache, where the night looks for it: a real night finds it
    cached from its first night."""
    target = wd / "cache" / base.relative_to(base.parents[2])
    target.parent.mkdir(parents=True, exist_ok=True)
    for f in (base, base.with_name(base.name + ".sha256")):
        shutil.copy(f, target.with_name(f.name))


def demo_plan(wd: Path, max_trials: int, deadline: datetime | None = None):
    """The plan `python -m study.nightly --demo --no-progress` makes in wd (deadline: now +
    [demo] window_min unless given)."""
    import dataclasses
    from study.night import add_common_args, plan
    ap = argparse.ArgumentParser()
    add_common_args(ap)
    args = ap.parse_args(["--config", str(wd / "autoresearch.toml"), "--demo", "--no-progress"])
    p = plan(args, max_trials=max_trials)
    return dataclasses.replace(p, deadline=deadline) if deadline else p


def run_night(p, log_path: Path) -> int:
    from rich.console import Console
    from study.runner import NightRunner
    with open(log_path, "a") as log:
        return NightRunner(p, console=Console(file=log, width=120)).run()


def stop_serving(wd: Path) -> None:
    """Whatever the night left serving in wd (the managed backend's server) is stopped."""
    from study.config import load_settings
    from study.serving import make_serving
    s = load_settings(wd / "autoresearch.toml", demo=True)
    make_serving(s, ROOT, s.path(s.paths.adapters)).stop()


def rss_mb(pid: int | None = None, proc: Path = Path("/proc")) -> float:
    """Resident memory now, in MiB: /proc where there is one (Linux), else `ps -o rss=`
    (macOS and the BSDs, in KiB). The peak from getrusage is the last resort: an upper bound."""
    pid = os.getpid() if pid is None else pid
    try:
        pages = int((proc / str(pid) / "statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        return int(out.split()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # bytes on macOS, KiB on Linux
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
