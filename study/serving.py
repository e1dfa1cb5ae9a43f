"""council-mlx, the serving model: stopped to free the accelerator, always started again.

Backends share one small interface (stop, start, is_up); `paused()` is what a trial uses.
- none:    nothing is served here.
- managed: we run `python -m mlx_lm server` on 127.0.0.1 with adapters/current (PID file).
- launchd: the user's LaunchAgent, booted out and bootstrapped with launchctl.
- command: the user's own stop/start commands (argv lists, never a shell string).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

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
    pass


class Serving:
    name = "none"

    def stop(self) -> None:
        """Stop serving and return only once it is really gone."""

    def start(self) -> None:
        """Start serving and return only once a health check passes."""

    def is_up(self) -> bool:
        return True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            # Whatever happened in the trial, the user's model comes back.
            self.start()


class _HealthChecked(Serving):
    def __init__(self, health_url: str, start_timeout_s: float, stop_timeout_s: float):
        self.health_url, self.start_timeout_s, self.stop_timeout_s = health_url, start_timeout_s, stop_timeout_s

    def is_up(self) -> bool:
        return http_ok(self.health_url)

    def _await_up(self, what: str) -> None:
        if not wait_for(self.is_up, self.start_timeout_s, 0.5):
            raise ServingError(f"{what} did not pass its health check {self.health_url} within {self.start_timeout_s:.0f} s")

    def _await_down(self, what: str) -> None:
        if not wait_for(lambda: not self.is_up(), self.stop_timeout_s):
            raise ServingError(f"{what} still answers {self.health_url} {self.stop_timeout_s:.0f} s after stop")


def managed_argv(settings, model_dir: str | Path | None = None, adapter: Path | None = None) -> list[str]:
    s = settings.serving
    model = str(model_dir or Path(settings.modes.proxy.model).expanduser())
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", model, "--host", s.host, "--port", str(s.port)]
    if adapter is not None:
        argv += ["--adapter-path", str(adapter)]
    return argv


class ManagedServing(_HealthChecked):
    """We own the process: started detached (it outlives the night), tracked by a PID file."""

    name = "managed"

    def __init__(self, settings, model_dir: Path, adapters_root: Path):
        s = settings.serving
        if s.host not in LOOPBACK and not s.allow_remote:
            raise ConfigError(settings.file, "serving.host",
                              f"{s.host!r} is not loopback; set serving.allow_remote = true to expose the model")
        super().__init__(s.health_url or f"http://{s.host}:{s.port}/health", s.start_timeout_s, s.stop_timeout_s)
        self.settings, self.model_dir, self.adapters_root = settings, Path(model_dir), Path(adapters_root)
        self.host, self.port = s.host, s.port
        cache = settings.path(settings.paths.cache)
        self.pid_file = cache / "council-mlx.pid"
        self.hf_cache = cache / "hf-hub"   # mlx_lm server's /v1/models needs an existing folder
        self.log_file = settings.path(settings.paths.logs) / "council-mlx.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            # Started by this process (the night restarts it after each trial): once it exits
            # it stays a zombie, which kill(pid, 0) still finds, until it is reaped here.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return None
        except ChildProcessError:
            pass  # not our child: started by an earlier night
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def argv(self) -> list[str]:
        current = self.adapters_root / "current"
        adapter = current if (current / "adapters.safetensors").exists() else None
        return managed_argv(self.settings, self.model_dir, adapter)

    def start(self) -> None:
        if self.pid() is not None and self.is_up():
            return
        if port_open(self.host, self.port):
            raise ServingError(f"port {self.host}:{self.port} is taken by a process that is not ours")
        self.hf_cache.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HUB_CACHE=str(self.hf_cache), HF_HUB_OFFLINE="1")
        with open(self.log_file, "ab") as log:
            log.write(f"--- council-autoresearch: starting {' '.join(self.argv())}\n".encode())
            log.flush()
            proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, cwd=self.settings.root)
        from common.atomic import atomic_write_text
        atomic_write_text(self.pid_file, f"{proc.pid}\n")
        if not wait_for(lambda: proc.poll() is None and self.is_up(), self.start_timeout_s, 0.5):
            code = proc.poll()
            raise ServingError(f"mlx_lm server did not come up on {self.health_url}"
                               + (f" (exited {code}; see {self.log_file})" if code is not None else ""))

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        gone = lambda: self.pid() is None and not port_open(self.host, self.port)  # noqa: E731
        if not wait_for(gone, self.stop_timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(gone, 5)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        self.pid_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError), open(self.log_file, "ab") as log:
            log.write(f"--- council-autoresearch: stopped pid {pid} (port {self.port} closed)\n".encode())


class LaunchdServing(_HealthChecked):
    name = "launchd"

    def __init__(self, settings):
        s = settings.serving
        super().__init__(s.health_url or f"http://{s.host}:{s.port}/health", s.start_timeout_s, s.stop_timeout_s)
        self.label = s.label
        self.plist = Path.home() / "Library" / "LaunchAgents" / f"{s.label}.plist"

    def _launchctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["launchctl", *args], capture_output=True, text=True, check=False)

    def stop(self) -> None:
        # bootout, not kill: a KeepAlive agent would be restarted at once.
        self._launchctl("bootout", f"gui/{os.getuid()}/{self.label}")
        self._await_down(f"launchd agent {self.label}")

    def start(self) -> None:
        if self.is_up():
            return
        out = self._launchctl("bootstrap", f"gui/{os.getuid()}", str(self.plist))
        if out.returncode != 0:
            self._launchctl("kickstart", f"gui/{os.getuid()}/{self.label}")
        self._await_up(f"launchd agent {self.label}")


class CommandServing(_HealthChecked):
    name = "command"

    def __init__(self, settings):
        s = settings.serving
        if not s.stop_command or not s.start_command:
            raise ConfigError(settings.file, "serving.stop_command" if not s.stop_command else "serving.start_command",
                              "the command backend needs both stop_command and start_command (argv lists)")
        super().__init__(s.health_url or f"http://{s.host}:{s.port}/health", s.start_timeout_s, s.stop_timeout_s)
        self.stop_cmd, self.start_cmd = list(s.stop_command), list(s.start_command)

    def stop(self) -> None:
        subprocess.run(self.stop_cmd, check=False, timeout=self.stop_timeout_s)
        self._await_down("council-mlx (stop_command)")

    def start(self) -> None:
        if self.is_up():
            return
        subprocess.Popen(self.start_cmd, start_new_session=True, stdin=subprocess.DEVNULL)
        self._await_up("council-mlx (start_command)")


def make_serving(settings, model_dir: Path | None = None, adapters_root: Path | None = None) -> Serving:
    backend = settings.serving.backend
    if backend == "managed":
        return ManagedServing(settings, model_dir, adapters_root)
    if backend == "launchd":
        return LaunchdServing(settings)
    if backend == "command":
        return CommandServing(settings)
    return Serving()
