"""Fixtures for tests that run the nightly against a private copy of the configuration.

Every path of a night (study db, results.tsv, adapters, vault, logs, cache) lives under
the test's tmp folder; only the demo model is shared, through symlinks into the test
session's demo cache, so it is built once per test run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# With "margin = 0.0", a permissive gate: the bootstrap P and the noise bar (on by default,
# autoresearch.toml [gate]) off, for tests that need a trial kept whatever it learned.
NO_NOISE_BAR = {"require_p = 0.95 ": "# require_p = 0.95 ", "\nalpha = 0.05\n": "\n"}


def make_workdir(tmp: Path, *, pretrain_s: float | None = None, overrides: dict[str, str] | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("search_space.yaml", "council.yaml"):
        shutil.copy(ROOT / name, tmp / name)
    text = (ROOT / "autoresearch.toml").read_text()
    text = text.replace('cache = ".cache"', 'cache = "cache"')
    # The workdir is private already: a demo night writes straight into it.
    text = text.replace('root = "demo-run"', 'root = "."')
    if pretrain_s is not None:
        text = text.replace("pretrain_s = 100", f"pretrain_s = {pretrain_s}")
    for old, new in (overrides or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp / "autoresearch.toml").write_text(text)
    return tmp


@pytest.fixture
def workdir(tmp_path) -> Path:
    return make_workdir(tmp_path / "night")


def link_demo_cache(workdir: Path, demo_assets) -> None:
    """Point the workdir's cache at the already-built demo (same key: same pretrain_s)."""
    cache = workdir / "cache"
    cache.mkdir(exist_ok=True)
    built = Path(demo_assets.model_dir).parent
    os.symlink(built, cache / built.name)


@pytest.fixture
def demo_workdir(tmp_path, demo_assets) -> Path:
    pretrain = float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20"))
    wd = make_workdir(tmp_path / "night", pretrain_s=pretrain)
    link_demo_cache(wd, demo_assets)
    return wd


def stop_managed(wd: Path) -> None:
    """The council-mlx server a night left up (that is its job), stopped by the PID it recorded."""
    try:
        pid = int(json.loads((wd / "cache" / "council-mlx.pid").read_text())["pid"])
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ValueError, KeyError, TypeError, ProcessLookupError):
        pass
