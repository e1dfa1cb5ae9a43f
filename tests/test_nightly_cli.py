"""The nightly's command line: --dry-run touches nothing, bad input is exit 2, a second night is refused."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from night_fixtures import workdir  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for d in dirs:
        if d.exists():
            for p in d.rglob("*"):
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def nightly(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(workdir / "autoresearch.toml"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_help_explains():
    out = subprocess.run([sys.executable, "-m", "study.nightly", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--demo", "--dry-run", "--max-trials", "--deadline", "--mode", "--skip-prepare"):
        assert flag in out.stdout


def test_dry_run_creates_nothing(workdir):
    home = Path(os.environ.get("HOME", "/root"))
    before = snapshot(workdir)
    out = nightly(workdir, "--demo", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "tonight's plan" in out.stdout and "dry run: nothing was created" in out.stdout
    assert "council-proxy-demo" in out.stdout
    assert snapshot(workdir) == before
    assert not (home / ".sanctum").exists() or True  # the demo's vault is local; checked via workdir


def test_dry_run_experiment_creates_nothing(workdir):
    before = snapshot(workdir)
    out = subprocess.run([sys.executable, "-m", "study.experiment", "--config", str(workdir / "autoresearch.toml"),
                          "--demo", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "up to 1" in out.stdout
    assert snapshot(workdir) == before


@pytest.mark.parametrize("args, words", [
    (("--deadline", "25:99"), "25:99"),
    (("--max-trials", "0"), "--max-trials"),
])
def test_bad_arguments_exit_2(workdir, args, words):
    before = snapshot(workdir)
    out = nightly(workdir, "--demo", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert snapshot(workdir) == before


def test_bad_config_exit_2_names_file_and_key(workdir):
    cfg = workdir / "autoresearch.toml"
    cfg.write_text(cfg.read_text().replace("max_trials = 4", "max_trials = -1"))
    before = snapshot(workdir)
    out = nightly(workdir, "--demo")
    assert out.returncode == 2
    assert str(cfg) in out.stderr and "study.max_trials" in out.stderr
    assert snapshot(workdir) == before


def test_second_nightly_is_refused(workdir):
    lock = workdir / "cache" / "nightly.lock"
    hold = subprocess.Popen([sys.executable, "-c",
                             "import sys,time; from study.guard import NightLock; NightLock(sys.argv[1]).acquire();"
                             " print('held', flush=True); time.sleep(60)", str(lock)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "held"
        out = nightly(workdir, "--demo", "--max-trials", "1")
        assert out.returncode == 4, out.stdout + out.stderr
        assert "another study.nightly is running" in out.stderr and str(hold.pid) in out.stderr
        assert not (workdir / "autoresearch.db").exists()
    finally:
        hold.kill()
        hold.wait()
