"""A real sshd on 127.0.0.1 for tests: host and client keys made here, a `Host` entry in
a test ssh config, stopped (with every process it started) by PID.

Needs Debian's openssh-server (/usr/sbin/sshd) and rsync; `.ci/run` installs both.
Use as a context manager:  with SshNode(tmp) as node: node.ssh_config, node.alias ...
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from netutil import free_port

SSHD = "/usr/sbin/sshd"


def have_sshd() -> bool:
    return Path(SSHD).is_file() and bool(shutil.which("ssh")) and bool(shutil.which("rsync"))


def children(pid: int) -> list[int]:
    """All descendants of pid (from ps, as on macOS too), deepest last."""
    out = subprocess.run(["ps", "-axo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    parents: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, ppid = (int(x) for x in line.split())
        parents.setdefault(ppid, []).append(child)
    out_pids, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out_pids.append(child)
            todo.append(child)
    return out_pids


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
                   check=True, capture_output=True)


class SshNode:
    """sshd -D on a free loopback port; `alias` is the Host entry in `ssh_config`."""

    def __init__(self, root: Path, alias: str = "trainnode"):
        self.root, self.alias = Path(root), alias
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.ssh_config = self.root / "ssh_config"

    def __enter__(self) -> "SshNode":
        self.root.mkdir(parents=True, exist_ok=True)
        host_key, client_key = self.root / "host_key", self.root / "client_key"
        keygen(host_key)
        keygen(client_key)
        (self.root / "authorized_keys").write_text((self.root / "client_key.pub").read_text())
        host_pub = (self.root / "host_key.pub").read_text().split()
        (self.root / "known_hosts").write_text(f"{self.alias} {host_pub[0]} {host_pub[1]}\n")
        (self.root / "sshd_config").write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {host_key}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}", f"PidFile {self.root / 'sshd.pid'}",
            "UsePAM no", "StrictModes no", "PermitRootLogin yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "LogLevel ERROR", "",
        ]))
        self.write_client_config(self.port)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "wb"))
        self._wait_listening()
        return self

    def write_client_config(self, port: int, path: Path | None = None, known_hosts: Path | None = None) -> Path:
        path = path or self.ssh_config
        path.write_text("\n".join([
            f"Host {self.alias}", "  HostName 127.0.0.1", f"  Port {port}", "  User root",
            f"  IdentityFile {self.root / 'client_key'}", "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {known_hosts or self.root / 'known_hosts'}",
            "  GlobalKnownHostsFile /dev/null", f"  HostKeyAlias {self.alias}",
            "  StrictHostKeyChecking yes", "  LogLevel ERROR", "",
        ]))
        return path

    def _wait_listening(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def sessions(self) -> list[int]:
        """Processes of the open connections: sshd's per-connection children and below."""
        return children(self.proc.pid) if self.proc else []

    def kill(self, *, freeze_sessions: bool = False) -> list[int]:
        """Kills the listening sshd by its PID. Its open connections live in child
        processes: they are killed too, or (freeze_sessions) stopped, as a laptop that
        leaves the network sends nothing more; returns the frozen PIDs."""
        if self.proc is None:
            return []
        below = self.sessions()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        sig = signal.SIGSTOP if freeze_sessions else signal.SIGKILL
        for pid in below:
            _signal(pid, sig)
        self._frozen = below if freeze_sessions else []
        return self._frozen

    def __exit__(self, *exc) -> None:
        below = self.sessions() + list(getattr(self, "_frozen", []))
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in below:
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
