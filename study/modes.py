"""Proxy or full: the seed's one-line detection, `ssh -o ConnectTimeout=3 <node> echo ok`.

Kept light (no train_core, no mlx): `--dry-run` plans through here.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class ModeChoice:
    mode: str      # "proxy" | "full"
    reason: str


def ssh_options(ssh_config: str | None = None, *, accept_new: bool = False, connect_timeout_s: int = 3,
                alive_interval_s: int = 5, alive_count_max: int = 2) -> list[str]:
    """Options for every ssh (and rsync -e ssh) to the node: never a password prompt,
    never hang on a dead link, and host keys checked (accept-new only when configured)."""
    opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout_s}",
            "-o", f"ServerAliveInterval={alive_interval_s}", "-o", f"ServerAliveCountMax={alive_count_max}",
            "-o", "StrictHostKeyChecking=" + ("accept-new" if accept_new else "yes")]
    return (["-F", ssh_config] if ssh_config else []) + opts


# The seed's options, for callers that import them.
SSH_OPTS = ssh_options()


def node_reachable(host: str, ssh_config: str | None = None, timeout_s: float = 5.0, *,
                   accept_new: bool = False) -> tuple[bool, str]:
    # argv list, never a shell string; "--": the host name cannot be read as an option.
    cmd = ["ssh", *ssh_options(ssh_config, accept_new=accept_new), "--", host, "echo ok"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"ssh {host}: no answer in {timeout_s:.0f} s"
    except FileNotFoundError:
        return False, "ssh is not installed"
    if out.returncode == 0 and out.stdout.strip() == "ok":
        return True, f"ssh {host}: ok"
    detail = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
    return False, f"ssh {host}: {detail}"


def choose_mode(requested: str, host: str, ssh_config: str | None = None, *,
                accept_new: bool = False) -> ModeChoice:
    if requested == "proxy":
        return ModeChoice("proxy", "requested")
    if not host:
        if requested == "full":
            return ModeChoice("proxy", "full mode requested but [modes.full] host is empty")
        return ModeChoice("proxy", "no training node configured")
    if host.startswith("-") or any(c.isspace() for c in host):
        return ModeChoice("proxy", f"[modes.full] host {host!r} is not a host name")
    ok, why = node_reachable(host, ssh_config, accept_new=accept_new)
    if ok:
        return ModeChoice("full", why)
    return ModeChoice("proxy", f"node unreachable ({why})")
