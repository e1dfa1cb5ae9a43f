"""launchd plist and systemd units: the nightly command, 02:00, logs, PATH; both platforms' files."""
from __future__ import annotations

import configparser
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from night_fixtures import workdir  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def run(module: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_launchd_plist_round_trips(workdir, tmp_path):
    home = tmp_path / "home"
    cfg = workdir / "autoresearch.toml"
    out = run("study.launchd", "install", "--config", str(cfg), home=home)
    assert out.returncode == 0, out.stderr
    path = home / "Library" / "LaunchAgents" / "com.sanctum.autoresearch.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["Label"] == "com.sanctum.autoresearch"
    assert plist["ProgramArguments"][:3] == [sys.executable, "-m", "study.nightly"]
    assert str(cfg) in plist["ProgramArguments"]
    assert plist["WorkingDirectory"] == str(workdir.resolve())
    assert plist["StartCalendarInterval"] == {"Hour": 2, "Minute": 0}
    assert plist["StandardOutPath"].startswith(str(workdir / "logs"))
    assert plist["StandardErrorPath"].startswith(str(workdir / "logs"))
    assert str(Path(sys.executable).parent) in plist["EnvironmentVariables"]["PATH"].split(":")
    if sys.platform != "darwin":
        assert "launchctl bootstrap" in out.stdout
    printed = run("study.launchd", "print", "--config", str(cfg), home=home)
    assert plistlib.loads(printed.stdout.encode()) == plist
    out = run("study.launchd", "uninstall", "--config", str(cfg), home=home)
    assert out.returncode == 0 and not path.exists()


def test_launchd_schedule_follows_config(workdir, tmp_path):
    cfg = workdir / "autoresearch.toml"
    cfg.write_text(cfg.read_text().replace('start = "02:00"', 'start = "01:30"'))
    out = run("study.launchd", "print", "--config", str(cfg), home=tmp_path)
    assert plistlib.loads(out.stdout.encode())["StartCalendarInterval"] == {"Hour": 1, "Minute": 30}


def test_launchd_serving_agent_keeps_mlx_server_alive(workdir, tmp_path):
    out = run("study.launchd", "print", "--serving", "--config", str(workdir / "autoresearch.toml"), home=tmp_path)
    plist = plistlib.loads(out.stdout.encode())
    assert plist["Label"] == "com.sanctum.council-mlx" and plist["KeepAlive"] is True
    argv = plist["ProgramArguments"]
    assert argv[1:4] == ["-m", "mlx_lm", "server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_systemd_units_parse(workdir, tmp_path):
    home = tmp_path / "home"
    cfg = workdir / "autoresearch.toml"
    out = run("study.systemd", "install", "--config", str(cfg), home=home)
    assert out.returncode == 0, out.stderr
    units = home / ".config" / "systemd" / "user"
    service = configparser.ConfigParser(interpolation=None, strict=True)
    service.optionxform = str
    service.read(units / "council-autoresearch.service")
    argv = shlex.split(service["Service"]["ExecStart"])
    assert argv[:3] == [sys.executable, "-m", "study.nightly"] and str(cfg) in argv
    assert service["Service"]["WorkingDirectory"] == str(workdir.resolve())
    timer = configparser.ConfigParser(interpolation=None, strict=True)
    timer.optionxform = str
    timer.read(units / "council-autoresearch.timer")
    assert timer["Timer"]["OnCalendar"] == "*-*-* 02:00:00"
    assert timer["Timer"]["Persistent"] == "true"
    if shutil.which("systemd-analyze"):
        # System mode: --user needs a running user manager, which CI containers lack.
        v = subprocess.run(["systemd-analyze", "verify", str(units / "council-autoresearch.service"),
                            str(units / "council-autoresearch.timer")], capture_output=True, text=True)
        assert v.returncode == 0, v.stderr
    out = run("study.systemd", "uninstall", "--config", str(cfg), home=home)
    assert out.returncode == 0 and not (units / "council-autoresearch.service").exists()
