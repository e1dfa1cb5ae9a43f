"""council-mlx, the serving model: stopped to free the accelerator, started again on
whatever adapters/current names then.

Backends share one small interface (stop, start, is_up); study.keeper adds the probe.
- none:    nothing is served here.
- managed: we run `python -m mlx_lm server` on 127.0.0.1 with adapters/current (PID file).
- launchd: the user's LaunchAgent, booted out and bootstrapped with launchctl.
- command: the user's own stop/start commands (argv lists, never a shell string).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.atomic import atomic_write_json
from common.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback by default)
            return 200 <= r.status < 300
    except Exception:
        return False


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_for(pred, timeout_s: float, interval: float = 0.25) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


class ServingError(RuntimeError):
    """Serving could not be brought up on adapters/current, or did not answer as its eval
    recorded even after a restart and a rollback. `report` (study.keeper) says what was tried."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def served_adapter(adapters_root: Path | None) -> Path | None:
    """The adapter folder adapters/current resolves to now (None: nothing promoted, the base
    model). Resolved, so that a later repoint of the link shows as a different adapter."""
    if adapters_root is None:
        return None
    current = Path(adapters_root) / "current"
    return current.resolve() if (current / "adapters.safetensors").exists() else None


def _as_text(adapter: Path | None) -> str | None:
    return str(adapter) if adapter is not None else None


class Serving:
    """start() serves what adapters/current names *now*: `mlx_lm server` reads --adapter-path
    once, so a server up on another adapter is restarted. It returns True when it (re)started
    the server (a probe is due), False when it was already serving that adapter."""

    name = "none"

    def __init__(self, adapters_root: Path | None = None):
        self.adapters_root = Path(adapters_root) if adapters_root is not None else None

    def wanted(self) -> Path | None:
        return served_adapter(self.adapters_root)

    def stop(self) -> None:
        """Stop serving and return only once it is really gone."""

    def start(self) -> bool:
        """Serve adapters/current and return only once a health check passes."""
        return False

    def is_up(self) -> bool:
        return True


class _HealthChecked(Serving):
    def __init__(self, settings, adapters_root: Path | None):
        super().__init__(adapters_root)
        s = settings.serving
        self.health_url = s.health_url or f"http://{s.host}:{s.port}/health"
        self.start_timeout_s, self.stop_timeout_s = s.start_timeout_s, s.stop_timeout_s
        # What we last started, for backends whose process we do not own (launchd, command).
        self.served_file = settings.state_dir() / f"council-mlx-{self.name}.json"

    def is_up(self) -> bool:
        return http_ok(self.health_url)

    def _await_up(self, what: str) -> None:
        if not wait_for(self.is_up, self.start_timeout_s, 0.5):
            raise ServingError(f"{what} did not pass its health check {self.health_url} within {self.start_timeout_s:.0f} s")

    def _await_down(self, what: str) -> None:
        if not wait_for(lambda: not self.is_up(), self.stop_timeout_s):
            raise ServingError(f"{what} still answers {self.health_url} {self.stop_timeout_s:.0f} s after stop")

    def _last_served(self) -> dict | None:
        try:
            rec = json.loads(self.served_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def _remember(self, adapter: Path | None) -> None:
        atomic_write_json(self.served_file, {"adapter": _as_text(adapter), "started_at": time.time()})

    def start(self) -> bool:
        want = self.wanted()
        if self.is_up():
            last = self._last_served()
            if last is not None and last.get("adapter") == _as_text(want):
                return False
            # Up on another adapter, or one we never started: its agent reads
            # adapters/current only when it starts.
            self._restart()
        else:
            self._launch()
        self._remember(want)
        return True

    def stop(self) -> None:
        self._halt()
        self.served_file.unlink(missing_ok=True)

    # The hooks of the backends whose process we do not own (launchd, command): they start
    # and stop it through the owner's own tool. ManagedServing owns its process and
    # replaces start()/stop() whole, so it never reaches these.
    def _launch(self) -> None:
        raise NotImplementedError

    def _halt(self) -> None:
        raise NotImplementedError

    def _restart(self) -> None:
        self._halt()
        self._launch()


def managed_argv(settings, model_dir: str | Path | None = None, adapter: Path | None = None) -> list[str]:
    s = settings.serving
    model = str(model_dir or Path(settings.modes.proxy.model).expanduser())
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", model, "--host", s.host, "--port", str(s.port)]
    if adapter is not None:
        argv += ["--adapter-path", str(adapter)]
    return argv


def process_identity(pid: int) -> tuple[str, str] | None:
    """(start time, command line) of a live process, from ps (the same on macOS and Linux;
    no /proc); None when no such process."""
    try:
        out = subprocess.run(["ps", "-ww", "-o", "lstart=", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=10, env=dict(os.environ, LC_ALL="C"), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.strip().split(None, 5)
    if out.returncode != 0 or len(parts) < 6:
        return None
    return " ".join(parts[:5]), parts[5]


class ManagedServing(_HealthChecked):
    """We own the process: started detached (it outlives the night), remembered in a PID
    file (JSON: pid, port, argv with the resolved adapter, the process's start time). The
    file is trusted only while that PID is still that process: after a reboot the number
    may belong to a stranger, who is never signalled."""

    name = "managed"

    def __init__(self, settings, model_dir: Path, adapters_root: Path):
        s = settings.serving
        if s.host not in LOOPBACK and not s.allow_remote:
            raise ConfigError(settings.file, "serving.host",
                              f"{s.host!r} is not loopback; set serving.allow_remote = true to expose the model")
        super().__init__(settings, adapters_root)
        self.settings, self.model_dir = settings, Path(model_dir)
        self.host, self.port = s.host, s.port
        state = settings.state_dir()
        self.pid_file = state / "council-mlx.pid"
        self.hf_cache = settings.path(settings.paths.cache) / "hf-hub"   # /v1/models needs an existing folder
        self.log_file = settings.path(settings.paths.logs) / "council-mlx.log"

    def _log(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "ab") as log:
                log.write(f"--- council-autoresearch: {line}\n".encode())

    def _ours(self, rec: dict) -> bool:
        """The recorded process is alive and is still the server we started."""
        pid = rec["pid"]
        with contextlib.suppress(ChildProcessError):
            # Our own child (the night restarts it) stays a zombie until reaped here.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        ident = process_identity(pid)
        return ident is not None and ident == (rec["started"], " ".join(rec["argv"])) and rec["port"] == self.port

    def _legacy(self, text: str) -> dict | None:
        """A PID file of the plain-number kind earlier versions wrote: adopted only when that
        process's command line is exactly one we would have started."""
        with contextlib.suppress(ValueError):
            pid = int(text.strip())
            ident = process_identity(pid)
            if ident is None:
                return None
            current = None if self.adapters_root is None else self.adapters_root / "current"
            for adapter in (None, current):
                argv = managed_argv(self.settings, self.model_dir, adapter)
                if ident[1] == " ".join(argv):
                    # Which adapter it loaded is unknown: a start() restarts it.
                    return {"pid": pid, "port": self.port, "argv": argv, "adapter": "?", "started": ident[0]}
        return None

    def record(self) -> dict | None:
        """What we started and is still running, else None (a stale PID file is removed)."""
        try:
            text = self.pid_file.read_text()
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(text)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            rec = self._legacy(text)
        ok = (isinstance(rec, dict) and isinstance(rec.get("pid"), int) and isinstance(rec.get("argv"), list)
              and isinstance(rec.get("started"), str) and self._ours(rec))
        if not ok:
            self.pid_file.unlink(missing_ok=True)
            self._log(f"removed stale PID file {self.pid_file} ({text.strip()[:120]}): not our server, not signalled")
            return None
        return rec

    def pid(self) -> int | None:
        rec = self.record()
        return rec["pid"] if rec else None

    def argv(self, adapter: Path | None = None) -> list[str]:
        return managed_argv(self.settings, self.model_dir, adapter if adapter is not None else self.wanted())

    def start(self) -> bool:
        want = self.wanted()
        rec = self.record()
        if rec is not None:
            if rec.get("adapter") == _as_text(want) and self.is_up():
                return False
            self.stop()   # serving another adapter than adapters/current names now (or hung)
        if port_open(self.host, self.port):
            raise ServingError(f"port {self.host}:{self.port} is taken by a process that is not ours")
        self.hf_cache.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv(want)
        env = dict(os.environ, HF_HUB_CACHE=str(self.hf_cache), HF_HUB_OFFLINE="1")
        self._log(f"starting {' '.join(argv)}")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, cwd=self.settings.root)
        ident = process_identity(proc.pid)
        atomic_write_json(self.pid_file, {
            "pid": proc.pid, "port": self.port, "argv": argv, "adapter": _as_text(want),
            "adapter_id": want.name if want is not None else None,
            "started": ident[0] if ident else ""})
        if not wait_for(lambda: proc.poll() is None and self.is_up(), self.start_timeout_s, 0.5):
            code = proc.poll()
            raise ServingError(f"mlx_lm server did not come up on {self.health_url}"
                               + (f" (exited {code}; see {self.log_file})" if code is not None else ""))
        return True

    def stop(self) -> None:
        rec = self.record()
        if rec is None:
            return
        pid = rec["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        gone = lambda: not self._ours(rec) and not port_open(self.host, self.port)  # noqa: E731
        if not wait_for(gone, self.stop_timeout_s) and self._ours(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(gone, 5)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        self.pid_file.unlink(missing_ok=True)
        self._log(f"stopped pid {pid} (port {self.port} closed)")


class LaunchdServing(_HealthChecked):
    name = "launchd"

    def __init__(self, settings, adapters_root: Path | None = None):
        super().__init__(settings, adapters_root)
        self.label = settings.serving.label
        self.plist = Path.home() / "Library" / "LaunchAgents" / f"{self.label}.plist"

    def _launchctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["launchctl", *args], capture_output=True, text=True, check=False)

    def _halt(self) -> None:
        # bootout, not kill: a KeepAlive agent would be restarted at once.
        self._launchctl("bootout", f"gui/{os.getuid()}/{self.label}")
        self._await_down(f"launchd agent {self.label}")

    def _launch(self) -> None:
        out = self._launchctl("bootstrap", f"gui/{os.getuid()}", str(self.plist))
        if out.returncode != 0:
            self._launchctl("kickstart", f"gui/{os.getuid()}/{self.label}")
        self._await_up(f"launchd agent {self.label}")

    def _restart(self) -> None:
        # kickstart -k: launchd kills the running instance and starts it again, which then
        # reads adapters/current anew.
        self._launchctl("kickstart", "-k", f"gui/{os.getuid()}/{self.label}")
        self._await_up(f"launchd agent {self.label}")


class CommandServing(_HealthChecked):
    name = "command"

    def __init__(self, settings, adapters_root: Path | None = None):
        s = settings.serving
        if not s.stop_command or not s.start_command:
            raise ConfigError(settings.file, "serving.stop_command" if not s.stop_command else "serving.start_command",
                              "the command backend needs both stop_command and start_command (argv lists)")
        super().__init__(settings, adapters_root)
        self.stop_cmd, self.start_cmd = list(s.stop_command), list(s.start_command)
        self.log_file = settings.path(settings.paths.logs) / "council-mlx.log"

    def _halt(self) -> None:
        subprocess.run(self.stop_cmd, check=False, timeout=self.stop_timeout_s, stdin=subprocess.DEVNULL,
                       capture_output=True)
        self._await_down("council-mlx (stop_command)")

    def _launch(self) -> None:
        # Its output goes to the log, not the night's: a server holding the night's stdout
        # open would keep whoever reads it (a pipe) waiting after the night has ended.
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            subprocess.Popen(self.start_cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT)
        self._await_up("council-mlx (start_command)")


def make_serving(settings, model_dir: Path | None = None, adapters_root: Path | None = None) -> Serving:
    backend = settings.serving.backend
    if backend == "managed":
        return ManagedServing(settings, model_dir, adapters_root)
    if backend == "launchd":
        return LaunchdServing(settings, adapters_root)
    if backend == "command":
        return CommandServing(settings, adapters_root)
    return Serving(adapters_root)
