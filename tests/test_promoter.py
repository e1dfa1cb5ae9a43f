"""Promotion, rollback, and a real fault-injection test: SIGKILL at every step."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from common.errors import ConfigError
from study import promote as promote_cli
from study.promoter import PAUSE_ENV, Promoter, PromotionError, file_digests

REPO = Path(__file__).resolve().parents[1]
PROMOTE_STEPS = ["copy", "verify", "publish", "link", "swap", "history"]
ROLLBACK_STEPS = ["link", "swap", "history"]


def make_adapter(folder: Path, seed: int, size: int = 64 * 1024) -> Path:
    folder.mkdir(parents=True)
    rnd = bytes((i * 31 + seed * 7) % 251 for i in range(size))
    (folder / "adapters.safetensors").write_bytes(rnd)
    (folder / "0000100_adapters.safetensors").write_bytes(rnd[::-1])
    (folder / "adapter_config.json").write_text(json.dumps({"rank": 8 + seed}))
    return folder


@pytest.fixture
def src(tmp_path):
    return {name: make_adapter(tmp_path / "adapters-experimental" / name, i)
            for i, name in enumerate(["a", "b", "c", "d"])}


@pytest.fixture
def promoter(tmp_path):
    return Promoter(tmp_path / "adapters")


def test_promote_twice_then_rollback(promoter, src):
    assert promoter.current() is None and promoter.current_id() is None
    p1 = promoter.promote(src["a"], "a", {"score": 0.61})
    assert promoter.current() == p1 and promoter.current_id() == "a"
    p2 = promoter.promote(src["b"], "b", {"score": 0.64})
    assert promoter.current() == p2 and promoter.current_id() == "b"
    rows = promoter.list()
    assert [r["id"] for r in rows] == ["a", "b"]
    assert [r["current"] for r in rows] == [False, True]
    assert rows[1]["meta"] == {"score": 0.64} and rows[1]["source"] == str(src["b"])
    assert set(rows[1]["sha256"]) == {"adapters.safetensors", "0000100_adapters.safetensors"}
    assert promoter.rollback() == p1
    assert promoter.current_id() == "a"
    assert [r["current"] for r in promoter.list()] == [True, False]
    assert [e["action"] for e in promoter.history()] == ["promote", "promote", "rollback"]


def test_copy_is_complete_and_source_unchanged(promoter, src):
    before = file_digests(src["a"])
    dest = promoter.promote(src["a"], "a")
    assert file_digests(dest) == before
    assert file_digests(src["a"]) == before
    assert dest == (promoter.root / "promoted" / "a").resolve()


def test_symlink_is_relative_and_tree_movable(promoter, src, tmp_path):
    promoter.promote(src["a"], "a")
    assert os.readlink(promoter.root / "current") == os.path.join("promoted", "a")
    moved = tmp_path / "elsewhere"
    promoter.root.rename(moved)
    assert Promoter(moved).current() == (moved / "promoted" / "a").resolve()
    assert file_digests(Promoter(moved).current()) == file_digests(src["a"])


def test_rollback_undoes_promotions_in_order(promoter, src):
    for k in "abc":
        promoter.promote(src[k], k)
    assert promoter.rollback().name == "b"
    assert promoter.rollback().name == "a"
    with pytest.raises(ConfigError, match="no earlier"):
        promoter.rollback()
    promoter.promote(src["d"], "d")
    # d was promoted over a, so undoing it returns to a (not to the rolled-back c)
    assert promoter.rollback().name == "a"


def test_rollback_errors(promoter, src):
    with pytest.raises(ConfigError, match="nothing is promoted"):
        promoter.rollback()
    promoter.promote(src["a"], "a")
    with pytest.raises(ConfigError):
        promoter.rollback()
    assert promoter.current_id() == "a"


@pytest.mark.parametrize("exp_id", ["", "../x", "a/b", ".hidden", "x.tmp-1", "a b"])
def test_unsafe_ids_refused(promoter, src, exp_id):
    with pytest.raises(ConfigError):
        promoter.promote(src["a"], exp_id)


def test_bad_sources_refused(promoter, src, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        promoter.promote(tmp_path / "nope", "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="safetensors"):
        promoter.promote(empty, "x")
    with pytest.raises(ConfigError, match="meta"):
        promoter.promote(src["a"], "x", {"bad": object()})
    assert promoter.current_id() is None


def test_same_id_idempotent_and_conflict(promoter, src):
    promoter.promote(src["a"], "a")
    promoter.promote(src["a"], "a")
    assert len(promoter.history()) == 1
    with pytest.raises(ConfigError, match="different content"):
        promoter.promote(src["b"], "a")
    assert file_digests(promoter.current()) == file_digests(src["a"])


def test_corrupt_copy_is_not_promoted(promoter, src, monkeypatch):
    promoter.promote(src["a"], "a")
    real_copytree = shutil.copytree

    def corrupting_copytree(s, d, **kw):   # a disk that flips a byte on the way
        out = real_copytree(s, d, **kw)
        f = Path(d) / "adapters.safetensors"
        data = bytearray(f.read_bytes())
        data[100] ^= 0xFF
        f.write_bytes(bytes(data))
        return out

    monkeypatch.setattr("study.promoter.shutil.copytree", corrupting_copytree)
    with pytest.raises(PromotionError):
        promoter.promote(src["b"], "b")
    assert promoter.current_id() == "a"
    assert sorted(p.name for p in (promoter.root / "promoted").iterdir()) == ["a"]


def test_current_that_is_a_real_folder_is_refused(promoter, src):
    (promoter.root / "current").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a symlink"):
        promoter.promote(src["a"], "a")


def test_dangling_current_is_reported(promoter, src):
    promoter.promote(src["a"], "a")
    shutil.rmtree(promoter.root / "promoted" / "a")
    with pytest.raises(ConfigError, match="missing adapter"):
        promoter.current()


# --- fault injection: SIGKILL at every step -----------------------------------------------

KILL_SCRIPT = ("import sys; from study.promoter import Promoter; p = Promoter(sys.argv[1]); "
               "p.promote(sys.argv[3], sys.argv[4]) if sys.argv[2] == 'promote' else p.rollback()")


def run_until(step: str, pause_dir: Path, args: list[str]) -> list[str]:
    """Run a promoter action in a subprocess, release each pause until `step`, SIGKILL there."""
    pause_dir.mkdir()
    env = {**os.environ, PAUSE_ENV: str(pause_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], cwd=REPO, env=env)
    seen: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            for marker in sorted(pause_dir.iterdir()):
                name = marker.name.split("-", 2)[2]
                if name == step:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    return seen + [name]
                seen.append(name)
                marker.unlink()
            assert proc.poll() is None, f"finished before step {step}: saw {seen}"
            time.sleep(0.005)
        raise AssertionError(f"step {step} never reached: saw {seen}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_complete(promoter: Promoter, expected_source: Path) -> None:
    cur = promoter.current()
    assert cur is not None
    assert file_digests(cur) == file_digests(expected_source)


@pytest.mark.parametrize("step", PROMOTE_STEPS)
def test_kill_during_promote_leaves_a_complete_current(tmp_path, src, step):
    promoter = Promoter(tmp_path / "adapters")
    promoter.promote(src["a"], "a")
    seen = run_until(step, tmp_path / "pause", [str(promoter.root), "promote", str(src["b"]), "b"])
    assert seen == PROMOTE_STEPS[:PROMOTE_STEPS.index(step) + 1]
    swapped = PROMOTE_STEPS.index(step) > PROMOTE_STEPS.index("swap")
    assert promoter.current_id() == ("b" if swapped else "a")
    assert_complete(promoter, src["b"] if swapped else src["a"])
    # Nothing unverified is ever published under promoted/<id>.
    published = PROMOTE_STEPS.index(step) > PROMOTE_STEPS.index("publish")
    assert (promoter.root / "promoted" / "b").exists() is published
    # The next night's promote recovers: leftovers swept, history right, rollback works.
    promoter.promote(src["b"], "b")
    assert promoter.current_id() == "b"
    assert sorted(p.name for p in (promoter.root / "promoted").iterdir()) == ["a", "b"]
    assert not list(promoter.root.glob("current.tmp-*"))
    assert [r["id"] for r in promoter.list()] == ["a", "b"]
    assert promoter.rollback().name == "a"


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_kill_during_rollback_leaves_a_complete_current(tmp_path, src, step):
    promoter = Promoter(tmp_path / "adapters")
    promoter.promote(src["a"], "a")
    promoter.promote(src["b"], "b")
    run_until(step, tmp_path / "pause", [str(promoter.root), "rollback"])
    swapped = step == "history"
    assert promoter.current_id() == ("a" if swapped else "b")
    assert_complete(promoter, src["a"] if swapped else src["b"])


def test_kill_between_swap_and_history_then_rollback(tmp_path, src):
    # The link says b, the history still says a: rollback must return to a, not fail.
    promoter = Promoter(tmp_path / "adapters")
    promoter.promote(src["a"], "a")
    run_until("history", tmp_path / "pause", [str(promoter.root), "promote", str(src["b"]), "b"])
    assert promoter.current_id() == "b"
    assert promoter.rollback().name == "a"


# --- CLI ------------------------------------------------------------------------------------

def cli(argv, capsys):
    buf = io.StringIO()
    rc = promote_cli.main(argv, Console(file=buf, width=200))
    return rc, buf.getvalue(), capsys.readouterr().err


def test_cli_list_and_rollback(promoter, src, capsys):
    rc, out, _ = cli(["--list", "--adapters", str(promoter.root)], capsys)
    assert rc == 0 and "nothing promoted" in out
    promoter.promote(src["a"], "exp-a", {"score": 0.612})
    promoter.promote(src["b"], "exp-b", {"score": 0.655})
    rc, out, _ = cli(["--list", "--adapters", str(promoter.root)], capsys)
    assert rc == 0
    assert "exp-a" in out and "0.655" in out
    star_line = next(line for line in out.splitlines() if "*" in line)
    assert "exp-b" in star_line and "exp-a" not in star_line
    rc, out, _ = cli(["--rollback", "--adapters", str(promoter.root)], capsys)
    assert rc == 0 and "current: exp-a" in out
    assert promoter.current_id() == "exp-a"


def test_cli_rollback_error_is_exit_2(promoter, capsys):
    rc, _, err = cli(["--rollback", "--adapters", str(promoter.root)], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "nothing is promoted" in err


def test_cli_runs_as_module(promoter, src):
    promoter.promote(src["a"], "exp-a")
    out = subprocess.run([sys.executable, "-m", "study.promote", "--list", "--adapters", str(promoter.root)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "exp-a" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "study.promote"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2


def test_cli_use_repairs_a_dangling_current(promoter, src, capsys):
    promoter.promote(src["a"], "exp-a")
    promoter.promote(src["b"], "exp-b")
    shutil.rmtree(promoter.promoted / "exp-b")          # current now dangles
    rc, out, _ = cli(["--use", "exp-a", "--adapters", str(promoter.root)], capsys)
    assert rc == 0 and "current: exp-a" in out
    assert promoter.current_id() == "exp-a"
    assert (promoter.root / "current" / "adapters.safetensors").read_bytes() == \
        (src["a"] / "adapters.safetensors").read_bytes()
    rc, _, err = cli(["--use", "exp-zzz", "--adapters", str(promoter.root)], capsys)
    assert rc == 2 and err.count("\n") == 1 and promoter.current_id() == "exp-a"
