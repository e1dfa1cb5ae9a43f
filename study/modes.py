"""Proxy or full: the seed's one-line detection, `ssh -o ConnectTimeout=3 <node> echo ok`."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

SSH_OPTS = ["-o", "ConnectTimeout=3", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=2"]


@dataclass(frozen=True)
class ModeChoice:
    mode: str      # "proxy" | "full"
    reason: str


def node_reachable(host: str, ssh_config: str | None = None, timeout_s: float = 5.0) -> tuple[bool, str]:
    # argv list, never a shell string: the host name cannot inject a command.
    cmd = ["ssh", *SSH_OPTS]
    if ssh_config:
        cmd += ["-F", ssh_config]
    cmd += ["--", host, "echo ok"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return False, f"ssh {host}: no answer in {timeout_s:.0f} s"
    except FileNotFoundError:
        return False, "ssh is not installed"
    if out.returncode == 0 and out.stdout.strip() == "ok":
        return True, f"ssh {host}: ok"
    detail = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
    return False, f"ssh {host}: {detail}"


def choose_mode(requested: str, host: str, ssh_config: str | None = None) -> ModeChoice:
    if requested == "proxy":
        return ModeChoice("proxy", "requested")
    if not host:
        if requested == "full":
            return ModeChoice("proxy", "full mode requested but [modes.full] host is empty")
        return ModeChoice("proxy", "no training node configured")
    ok, why = node_reachable(host, ssh_config)
    if ok:
        return ModeChoice("full", why)
    return ModeChoice("proxy", f"node unreachable ({why})")
