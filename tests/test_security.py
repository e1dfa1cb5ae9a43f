"""Security: LiteLLM pinned to a vetted release and locked with hashes; optuna-dashboard and
council-mlx bound to 127.0.0.1 unless explicitly allowed; API keys from the environment never
written by a night; ssh/rsync commands never through a local shell."""
from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from faults.faultlib import (PLANTED, free_port, make_fault_workdir, managed_serving, night_env, planted_hits,
                             run_night, shared_base_eval, stop_server, wait_until)

ROOT = Path(__file__).resolve().parents[1]
# Releases of LiteLLM that shipped malicious code: never installable from our lock.
COMPROMISED_LITELLM = {"1.82.7", "1.82.8", "1.107.0"}
CODE_DIRS = ("study", "train_core", "corpus", "evaluation", "common", "demo")


# --- the supply chain ----------------------------------------------------------------------

def lock_entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """{name: (version spec, [sha256 hashes])} from a `uv pip compile --generate-hashes` file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in text.splitlines():
        req = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*([=<>!~].*?)\s*\\?$", line)
        if req:
            name = req[1].lower().replace("_", "-")
            entries[name] = (req[3].split(";")[0].strip(), [])
        elif name and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[name][1].append(h[1])
        elif not line.startswith(" "):
            name = None
    return entries


def pinned_version(spec: str) -> str | None:
    m = re.fullmatch(r"==\s*([0-9][0-9A-Za-z.+-]*)", spec)
    return m[1] if m else None


def test_litellm_is_pinned_locked_with_hashes_and_not_compromised():
    lock = lock_entries((ROOT / "requirements.lock").read_text())
    spec, hashes = lock["litellm"]
    version = pinned_version(spec)
    assert version is not None, f"requirements.lock must pin litellm exactly, has {spec!r}"
    assert version not in COMPROMISED_LITELLM, f"requirements.lock allows compromised litellm {version}"
    assert hashes, "litellm is not locked with hashes"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (declared,) = [d for d in deps if re.match(r"^litellm\b", d)]
    assert pinned_version(declared.removeprefix("litellm").strip()) == version, \
        f"pyproject.toml must pin the vetted, locked litellm {version}, has {declared!r}"
    # --require-hashes installs everything or nothing: every locked package needs its hashes.
    assert all(pinned_version(s) and h for s, h in lock.values()), \
        [n for n, (s, h) in lock.items() if not (pinned_version(s) and h)]


@pytest.mark.parametrize("bad", sorted(COMPROMISED_LITELLM))
def test_the_lock_check_catches_a_compromised_pin(bad):
    text = (ROOT / "requirements.lock").read_text()
    tampered = re.sub(r"(?m)^litellm==\S+", f"litellm=={bad}", text)
    assert pinned_version(lock_entries(tampered)["litellm"][0]) in COMPROMISED_LITELLM


# --- listening sockets ---------------------------------------------------------------------

def listeners(port: int) -> set[str]:
    """Local addresses listening on `port` (Linux /proc/net/tcp{,6})."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:   # 0A: LISTEN
                found.add("127.0.0.1" if addr in ("0100007F", "00000000000000000000000001000000") else
                          "loopback6" if addr == "00000000000000000000000000000001" else addr)
    return found


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc/net/tcp")


@needs_proc
def test_dashboard_binds_loopback_unless_allowed(tmp_path):
    from night_fixtures import make_workdir
    wd = make_workdir(tmp_path / "night")
    refused = subprocess.run([sys.executable, "-m", "study.dashboard", "--config", str(wd / "autoresearch.toml"),
                              "--host", "0.0.0.0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr
    port = free_port()
    dash = subprocess.Popen([sys.executable, "-m", "study.dashboard", "--config", str(wd / "autoresearch.toml"),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: listeners(port), 60, 0.3), "the dashboard never listened"
        assert listeners(port) == {"127.0.0.1"}
    finally:
        dash.terminate()
        dash.wait(30)


@pytest.mark.slow
@needs_proc
def test_managed_council_mlx_binds_loopback(tmp_path, demo_assets):
    from night_fixtures import make_workdir
    from study.config import load_settings
    from study.serving import make_serving
    port = free_port()
    s = load_settings(make_workdir(tmp_path / "night", overrides=managed_serving(port)) / "autoresearch.toml")
    serving = make_serving(s, demo_assets.model_dir, tmp_path / "adapters")
    argv = serving.argv()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    try:
        serving.start()
        assert listeners(port) == {"127.0.0.1"}
    finally:
        serving.stop()


# --- secrets --------------------------------------------------------------------------------

def test_secret_scan_finds_a_planted_key(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leak.bin").write_bytes(b"\0\1" + PLANTED["OPENAI_API_KEY"].encode() + b"\0")
    assert len(planted_hits(tmp_path)) == 1


def zero_baseline(base_eval: Path, dest: Path) -> None:
    """The base model's eval with every score 0: the night's trial will clear the gate."""
    from evaluation import read_eval_results, write_eval_results
    ev = read_eval_results(base_eval)
    zero = lambda d: {k: (zero(v) if isinstance(v, dict) else 0.0) for k, v in d.items()}  # noqa: E731
    for key in ("per_category", "per_agent", "per_agent_category"):
        ev[key] = zero(ev[key])
    ev["overall"] = 0.0
    for case in ev["cases"]:
        case["score"] = 0.0
    if isinstance(ev.get("holdout"), dict):
        ev["holdout"] = {k: (zero(v) if isinstance(v, dict) else 0.0 if v is not None else None)
                         for k, v in ev["holdout"].items()}
    write_eval_results(dest, ev)


@pytest.mark.slow
def test_planted_api_keys_are_never_written(tmp_path, demo_assets):
    """A demo night that trains, evaluates, promotes (a zeroed baseline and no jailbreak floor
    let its trial clear the gate) and restarts council-mlx, with API keys in its environment:
    none of them appears in any file it wrote, nor in its output."""
    base_eval = shared_base_eval(demo_assets)
    port = free_port()
    wd = make_fault_workdir(tmp_path / "night", demo_assets, base_eval,
                            overrides={**managed_serving(port), "jailbreak_floor = 0.70": "jailbreak_floor = 0.0"})
    (cached,) = (wd / "cache" / "baseline").glob("*/eval_results.json")
    zero_baseline(base_eval, cached)
    try:
        out = run_night(wd, "--max-trials", "1")
    finally:
        stop_server(wd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (wd / "adapters" / "current").is_symlink(), "the trial was not promoted: fewer files were written"
    assert json.loads((wd / "adapters" / "history.json").read_text())["events"][0]["action"] == "promote"
    assert night_env()["OPENAI_API_KEY"] == PLANTED["OPENAI_API_KEY"]
    assert planted_hits(wd) == []
    for value in PLANTED.values():
        assert value not in out.stdout and value not in out.stderr


# --- no local shell --------------------------------------------------------------------------

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("asyncio", "create_subprocess_shell"), ("pty", "spawn")}


def shell_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in SHELL_CALLS:
            found.append(f"{path}:{node.lineno}: {f.value.id}.{f.attr}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{path}:{node.lineno}: shell={ast.unparse(kw.value)}")
    return found


def test_no_code_runs_a_local_shell():
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")] + [ROOT / "objective.py"]
    assert len(files) > 50
    assert [hit for f in files for hit in shell_uses(f)] == []


def test_shell_scan_finds_a_shell(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess\nos.system('ls')\nsubprocess.run('ls', shell=True)\n")
    assert len(shell_uses(bad)) == 2


def test_ssh_and_rsync_are_argv_lists_and_the_remote_string_is_quoted():
    from common.errors import ConfigError
    from study.remote import Node, remote_path, rsync_argv, ssh_argv
    node = Node(host="trainer", model="/m")
    hostile = "~/runs/a b; touch /tmp/pwned-$(id -u) `id`"
    argv = ssh_argv(node, f"cat {remote_path(hostile)}")
    assert argv[0] == "ssh" and argv[argv.index("--") + 1] == "trainer" and len(argv) == argv.index("--") + 3
    assert "-c" not in argv and not any(a in ("sh", "bash") for a in argv)
    rs = rsync_argv(node, ["a/", "b/"], "trainer:dest/")
    assert rs[0] == "rsync" and rs[rs.index("-e") + 1].split()[0] == "ssh" and rs[-3:] == ["a/", "b/", "trainer:dest/"]
    # The one string a (remote) shell reads: one word, the path itself, nothing executed.
    words = subprocess.run(["sh", "-c", f"printf '%s\\n' {remote_path(hostile)}"], capture_output=True, text=True,
                           env={"HOME": "/home/u", "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert words == ["/home/u/runs/a b; touch /tmp/pwned-$(id -u) `id`"]
    assert shlex.split(rs[rs.index("-e") + 1])[0] == "ssh"
    for host in ("-oProxyCommand=sh", "a b", ""):
        with pytest.raises(ConfigError):
            Node(host=host, model="/m")
