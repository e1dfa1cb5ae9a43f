"""Soak: many consecutive demo trials in ONE process; nothing may pile up.

    .venv/bin/python benchmarks/soak.py [--trials 30] [--workdir DIR]

One demo night of `--trials` trials in this process (study.runner.NightRunner, as
`python -m study.nightly --demo` runs it), tiny budgets (4 s training, ITERS x 0.02),
council-mlx served by a real `mlx_lm server` (the managed backend, on a free loopback port),
so every trial also stops and restarts it. A thread samples this process's open file
descriptors, child processes (zombies apart) and resident memory every 2 s, with the number
of trials results.tsv holds; the sample taken once trial 1 is done is the reference (imports,
MLX buffers, the base model's eval and the server are all warm by then).

Pass/fail, against bounds stated up front: no RUNNING trial left in the study; from the end
of trial 1 to the end of the night, open fds grow by at most FD_BOUND, live children by at
most CHILD_BOUND beyond council-mlx at the end (train_core beside it while training) and
zombies not at all, and resident memory by at most RSS_BOUND_MB. Every sample goes to
<workdir>/soak-samples.json. Exit 0 when within bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

FD_BOUND = 2          # open file descriptors
CHILD_BOUND = 0       # live children beyond council-mlx (and train_core while it trains)
RSS_BOUND_MB = 150    # resident memory (MLX keeps a buffer cache; a leak of a model per trial is ~8 MB)

from benchmarks import demo_night  # noqa: E402  (after the sys.path line)
from benchmarks.demo_night import free_port, rss_mb  # noqa: E402


@dataclass
class Sample:
    trials_done: int
    fds: int
    children: int
    zombies: int
    rss_mb: float
    elapsed_s: float


def open_fds() -> int:
    for d in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(d):
            return len(os.listdir(d)) - 1   # minus the descriptor listdir itself holds
    return -1


def children() -> tuple[int, int]:
    """(live, zombie) child processes of this process (`ps` works on Linux and macOS)."""
    out = subprocess.run(["ps", "-axo", "ppid=,stat=,comm="], capture_output=True, text=True).stdout
    rows = [r for r in (line.split(None, 2) for line in out.splitlines())
            if len(r) == 3 and r[0] == str(os.getpid()) and Path(r[2]).name != "ps"]   # not this very ps
    zombies = sum(1 for r in rows if r[1].startswith("Z"))
    return len(rows) - zombies, zombies


def make_workdir(wd: Path, port: int) -> Path:
    """The project's configuration with tiny budgets, the managed server and the shared demo cache."""
    return demo_night.make_workdir(wd, {
        "budget_s = 240\n": "budget_s = 4\n", "iters_scale = 0.5": "iters_scale = 0.02",
        'backend = "none"': 'backend = "managed"', "port = 8765": f"port = {port}"})


def night(wd: Path, trials: int) -> None:
    demo_night.run_night(demo_night.demo_plan(wd, trials), wd / "night.log")


def trials_done(wd: Path) -> int:
    try:
        return max(0, len((wd / "results.tsv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


class Sampler(threading.Thread):
    def __init__(self, wd: Path, every_s: float = 2.0):
        super().__init__(daemon=True)
        self.wd, self.every_s, self.stop, self.samples = wd, every_s, threading.Event(), []
        self.started = time.monotonic()

    def sample(self) -> Sample:
        fds = open_fds()                 # before reading results.tsv, which opens one for a moment
        live, zombies = children()
        return Sample(trials_done(self.wd), fds, live, zombies, round(rss_mb(), 1),
                      round(time.monotonic() - self.started, 1))

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            s = self.sample()
            if not self.samples or s.trials_done != self.samples[-1].trials_done:
                print(" ".join(f"{k}={v}" for k, v in asdict(s).items()), flush=True)
            self.samples.append(s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp folder")
    args = ap.parse_args(argv)
    from common.fastblas import enable
    enable()
    wd = make_workdir(args.workdir or Path(tempfile.mkdtemp(prefix="soak-")), free_port())
    print(f"workdir {wd}", flush=True)
    sampler = Sampler(wd)
    sampler.start()
    try:
        try:
            night(wd, args.trials)
        finally:
            sampler.stop.set()
            sampler.join()
        samples = sampler.samples + [sampler.sample()]
        (wd / "soak-samples.json").write_text(json.dumps([asdict(s) for s in samples], indent=1))
        return report(wd, samples, args.trials)
    finally:
        demo_night.stop_serving(wd)


def report(wd: Path, samples: list[Sample], trials: int) -> int:
    """The reference is trial 1's quietest sample (evaluating: no training child, serving
    stopped), the end is the last sample (the night over, council-mlx up again)."""
    import optuna
    from optuna.trial import TrialState
    study = optuna.load_study(study_name="council-proxy-demo", storage=f"sqlite:///{wd / 'autoresearch.db'}")
    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished, running = sum(s.is_finished() for s in states), states.count(TrialState.RUNNING)
    warm = [s for s in samples if s.trials_done == 1] or samples[:1]
    first, last = min(warm, key=lambda s: (s.fds, s.children)), samples[-1]
    most = max(s.children for s in samples)
    checks = {
        "trials finished": (finished, finished >= trials),
        "RUNNING left": (running, running == 0),
        "open fds growth": (last.fds - first.fds, last.fds - first.fds <= FD_BOUND),
        "live children at the end (council-mlx)": (last.children, last.children <= 1 + CHILD_BOUND),
        "most live children at once (council-mlx or train_core)": (most, most <= 2 + CHILD_BOUND),
        "zombies at the end": (last.zombies, last.zombies == 0),
        "RSS growth MB": (round(last.rss_mb - first.rss_mb, 1), last.rss_mb - first.rss_mb <= RSS_BOUND_MB),
    }
    for name, (value, ok) in checks.items():
        print(f"{name}: {value}  {'ok' if ok else 'OVER BOUND'}")
    print(f"after trial {first.trials_done}: fds {first.fds}, RSS {first.rss_mb} MB; after trial "
          f"{last.trials_done}: fds {last.fds}, children {last.children}, RSS {last.rss_mb} MB, peak RSS "
          f"{max(s.rss_mb for s in samples)} MB; {last.elapsed_s:.0f} s in all")
    return 0 if all(ok for _, ok in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
