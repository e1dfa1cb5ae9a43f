"""A full disk while the adapter is saved: adapters-experimental is a 1 MiB tmpfs (a trained
demo adapter is 4-6 MB; the data live elsewhere and fit). Each trial ends `failed:disk_full`,
nothing is promoted, the night goes on to its next trial and ends normally, and council-mlx
(a real `mlx_lm server`) is up after it. Needs root to mount: skipped otherwise.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from faultlib import (free_port, health, load_study, managed_serving, planted_hits, read_results, run_night,
                      stop_server, trial_log_lines)

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_disk(fault_workdir):
    port = free_port()
    wd = fault_workdir(overrides=managed_serving(port))
    mount = wd / "adapters-experimental"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield wd, mount, port
    finally:
        stop_server(wd)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_saving_the_adapter(tiny_disk):
    wd, mount, port = tiny_disk
    out = run_night(wd, "--max-trials", "2")
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    trials = load_study(wd).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished()]
    assert len(done) == 2, "the night did not go on after the first full disk"
    for t in done:
        assert t.user_attrs["result"] == "failed:disk_full", t.user_attrs.get("fail_detail", "")[-800:]
        assert any("No space left on device" in r for r in t.user_attrs["reasons"])
    df = read_results(wd)
    assert list(df["result"]) == ["failed:disk_full"] * 2
    assert sum("result: failed:disk_full" in line for line in trial_log_lines(wd)) == 2
    assert not os.path.lexists(wd / "adapters" / "current"), "something was promoted"
    assert health(port), "council-mlx is not up after the night"
    # The failed saves cleaned up after themselves: the disk is empty again.
    assert os.listdir(mount) == []
    assert planted_hits(wd) == []


def test_disk_full_is_told_apart_from_other_write_errors(tmp_path):
    """MLX's writer reports a short write without errno: the trainer calls it a full disk only
    when the bytes it tried to write do not fit in what is free (checked before cleanup)."""
    from train_core.child import disk_full
    from train_core.trainer import out_of_space
    assert not out_of_space(RuntimeError("[write] Unable to write 6161 bytes to file."), tmp_path)
    assert out_of_space(RuntimeError(f"[write] Unable to write {10**18} bytes to file."), tmp_path)
    assert not out_of_space(RuntimeError("[load] something else"), tmp_path)
    assert disk_full("OSError: [Errno 28] No space left on device for the adapter in /x")
    assert not disk_full("RuntimeError: [write] Unable to write 6161 bytes to file.")
