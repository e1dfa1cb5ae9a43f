"""Full mode: training on the remote node over ssh, with rsync both ways.

One trial: one rsync sends what changed of the code (train_core/, common/, and evaluation/
when the spec carries checkpoint checks), the trial's
train/valid data and its spec to the node's working folder; `python -m train_core
--events` runs there under ssh, its events drive the same callbacks as a local run
(pruning), the node enforces the budget, and a hard timeout here ends a hung run; one
rsync brings the adapter back into a temp folder, its sha256 must equal the one the
node reported, and only then is it renamed into place for the (local) eval.

Security: every command is an argv list (never a local shell string); the one string
the remote shell reads is built with shlex.quote; BatchMode=yes; host keys are checked
(StrictHostKeyChecking=yes, or accept-new for a first contact when configured).
A dead connection ends in RemoteLost within ConnectTimeout / ServerAlive* seconds.

Layout on the node, under the working folder W:
  W/code/{train_core,common}/   W/data/<key>/{train,valid}.jsonl
  W/specs/<exp-id>.json         W/adapters/<exp-id>/  (removed once fetched)
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from common.atomic import sha256_dir
from common.errors import ConfigError
from train_core import OutOfMemory, RemoteLost, TrainCallback, TrainResult, TrainSpec, run_training
from train_core.adapter import SCRATCH, discard, make_temp_dir, publish

from study import modes

ROOT = Path(__file__).resolve().parent.parent
CODE_PACKAGES = ("train_core", "common")          # all a training node needs of this project
ABANDONED_MIN = 180                               # node-side leftovers older than this are swept
SSH_LOST = 255                                    # ssh's own failure (no route, reset, timeout)
RSYNC_LOST = (10, 12, 30, 35, 255)                # socket I/O, protocol stream, timeouts, ssh
# Paths rsync passes to the remote side: old rsyncs (macOS) send them through the remote
# shell unquoted, so only characters no shell reads specially are allowed.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+,@=-]+$")


class RemoteError(RuntimeError):
    """The node answered, but a transfer or check failed (not a lost connection)."""


@dataclass(frozen=True)
class Node:
    host: str                              # ssh host (a Host entry of ssh_config, or a name)
    model: str                             # base model folder ON THE NODE
    python: str = "python3"                # interpreter on the node with mlx + mlx-lm
    workdir: str = "~/council-train"
    ssh_config: str = ""                   # ssh -F; empty: ssh's own configuration
    accept_new_host_key: bool = False
    connect_timeout_s: int = 3
    alive_interval_s: int = 5
    alive_count_max: int = 2

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise ConfigError(None, "modes.full.host", f"not a host name: {self.host!r}")

    @classmethod
    def from_settings(cls, ms: Any, root: Path | None = None) -> "Node":
        """From [modes.full] (study.config.ModeSettings); ssh_config relative to root."""
        cfg = ms.ssh_config
        if cfg:
            p = Path(cfg).expanduser()
            cfg = str(p if p.is_absolute() or root is None else root / p)
        return cls(host=ms.host, model=ms.model, python=ms.remote_python, workdir=ms.remote_workdir,
                   ssh_config=cfg, accept_new_host_key=ms.accept_new_host_key)


def ssh_options(node: Node) -> list[str]:
    return modes.ssh_options(node.ssh_config or None, accept_new=node.accept_new_host_key,
                             connect_timeout_s=node.connect_timeout_s, alive_interval_s=node.alive_interval_s,
                             alive_count_max=node.alive_count_max)


def ssh_argv(node: Node, remote_command: str) -> list[str]:
    # "--": the host can never be read as an option; the command is one argument.
    return ["ssh", *ssh_options(node), "--", node.host, remote_command]


def rsync_argv(node: Node, sources: Sequence[str], dest: str, *extra: str) -> list[str]:
    # rsync splits -e itself (quotes, no backslashes): shlex.join quotes what needs it.
    return ["rsync", "-a", "--timeout=60", "-e", shlex.join(["ssh", *ssh_options(node)]), *extra,
            "--", *sources, dest]


def remote_path(path: str) -> str:
    """A path for the remote shell: quoted, with a leading ~ still meaning $HOME."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _safe(path: str, key: str) -> str:
    if not _SAFE_PATH.match(path):
        raise ConfigError(None, key, f"{path!r}: use letters, digits and ._/+,@=- only "
                                     "(the path goes through rsync's remote shell)")
    return path


def _tail(text: str, lines: int = 2) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


@dataclass
class Layout:
    workdir: str            # absolute, on the node
    model: str              # absolute, on the node

    def code(self) -> str:
        return f"{self.workdir}/code"


@dataclass
class NodeLink:
    """ssh and rsync to the node, with a lost connection raised as RemoteLost; the node's
    absolute working and model folders, asked once. RemoteTrainer and
    study.remote_eval.RemoteEvaluator are built on it."""

    node: Node
    code_root: Path = ROOT
    timings: dict[str, float] = field(default_factory=dict)   # of the latest call, seconds
    _layout: Layout | None = None

    # -- plumbing ---------------------------------------------------------------------
    def _ssh(self, command: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        try:
            out = subprocess.run(ssh_argv(self.node, command), capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RemoteLost(f"ssh {self.node.host}: no answer in {timeout_s:.0f} s") from None
        if out.returncode == SSH_LOST:
            raise RemoteLost(f"ssh {self.node.host}: {_tail(out.stderr) or 'connection failed'}")
        return out

    def _rsync(self, sources: Sequence[str], dest: str, *extra: str) -> None:
        try:
            out = subprocess.run(rsync_argv(self.node, sources, dest, *extra), capture_output=True,
                                 text=True, stdin=subprocess.DEVNULL, timeout=3600)
        except subprocess.TimeoutExpired:
            raise RemoteLost(f"rsync with {self.node.host}: no end in an hour") from None
        if out.returncode in RSYNC_LOST:
            raise RemoteLost(f"rsync with {self.node.host} (exit {out.returncode}): {_tail(out.stderr)}")
        if out.returncode != 0:
            raise RemoteError(f"rsync with {self.node.host} (exit {out.returncode}): {_tail(out.stderr)}")

    def _timed(self, key: str, t0: float) -> None:
        self.timings[key] = round(time.monotonic() - t0, 3)

    def layout(self) -> Layout:
        """The node's absolute working folder (made if missing) and model folder, once.
        On the way, adapters and eval jobs older than ABANDONED_MIN (a connection lost
        mid-trial left them; nothing fetches them any more) are removed."""
        if self._layout is None:
            w, m = remote_path(self.node.workdir), remote_path(self.node.model)
            sweep = (f"find adapters eval specs -mindepth 1 -maxdepth 1 -mmin +{ABANDONED_MIN} "
                     "-exec rm -rf -- {} + 2>/dev/null")   # find's -exec: POSIX, BSD (macOS) and GNU alike
            out = self._ssh(f"mkdir -p {w} && cd {w} && mkdir -p adapters eval specs && {{ {sweep}; true; }} "
                            f"&& pwd && cd {m} && test -f config.json && pwd")
            lines = out.stdout.split()
            if out.returncode != 0 or len(lines) != 2:
                key = "modes.full.model" if len(lines) == 1 else "modes.full.remote_workdir"
                raise ConfigError(None, key, f"on {self.node.host}: {_tail(out.stderr) or 'not a model folder'} "
                                             f"(workdir {self.node.workdir!r}, model {self.node.model!r})")
            self._layout = Layout(workdir=_safe(lines[0], "modes.full.remote_workdir"), model=lines[1])
        return self._layout

    @staticmethod
    def stage_code(stage: Path, code_root: Path, packages: Sequence[str] = CODE_PACKAGES) -> None:
        """Symlinks to the project's packages under stage/code (rsync --copy-links sends them)."""
        (stage / "code").mkdir()
        for pkg in packages:
            (stage / "code" / pkg).symlink_to(code_root / pkg)

    def push_stage(self, stage: Path, lay: Layout) -> None:
        """One rsync of a staged tree into the working folder; --checksum sends only files
        whose bytes changed."""
        self._rsync([f"{stage}/"], f"{self.node.host}:{lay.workdir}/", "--checksum", "--copy-links",
                    "--exclude", "__pycache__", "--exclude", "*.pyc")


@dataclass
class RemoteTrainer(NodeLink):
    """A TrialContext.run_training for full mode: same call, training on the node."""

    def remote_spec(self, spec: TrainSpec, lay: Layout) -> tuple[TrainSpec, str, str]:
        """The spec as the node sees it, its data key and its name (the experiment id)."""
        name = _safe(Path(spec.adapter_dir).name, "adapter_dir")
        local_data = Path(spec.data_dir).resolve()
        key = f"{local_data.name}-{hashlib.sha256(str(local_data).encode()).hexdigest()[:8]}"
        _safe(key, "data_dir")
        remote = dataclasses.replace(spec, model=lay.model, data_dir=f"{lay.workdir}/data/{key}",
                                     adapter_dir=f"{lay.workdir}/adapters/{name}")
        return remote, key, name

    def push(self, spec: TrainSpec, remote: TrainSpec, key: str, name: str, lay: Layout) -> None:
        """One rsync: code, data and spec."""
        with tempfile.TemporaryDirectory(prefix="council-push-") as tmp:
            stage = Path(tmp)
            # Checkpoint checks score with the eval's own likelihood code (train_core.checks).
            self.stage_code(stage, self.code_root, CODE_PACKAGES + (("evaluation",) if spec.checks else ()))
            (stage / "data" / key).mkdir(parents=True)
            for split in ("train", "valid"):
                src = Path(spec.data_dir) / f"{split}.jsonl"
                if not src.is_file():
                    raise ConfigError(str(src), None, "file not found (need train.jsonl and valid.jsonl)")
                (stage / "data" / key / f"{split}.jsonl").symlink_to(src.resolve())
            (stage / "specs").mkdir()
            remote.to_json(stage / "specs" / f"{name}.json")
            (stage / "adapters").mkdir()
            self.push_stage(stage, lay)

    def train_command(self, lay: Layout, name: str) -> str:
        # No `exec`: the remote shell outlives python and reports a death by signal as
        # 128+N (ssh itself would answer 255 for it, the same as a lost connection).
        return (f"cd {shlex.quote(lay.code())} && {remote_path(self.node.python)} -m train_core "
                f"--spec {shlex.quote(f'{lay.workdir}/specs/{name}.json')} --events --quiet; exit $?")

    def fetch(self, result: TrainResult, remote_adapter: str, local_adapter: Path) -> None:
        """The adapter into a temp folder beside its place, checked, then renamed in."""
        tmp = make_temp_dir(local_adapter)
        try:
            (tmp / SCRATCH).rmdir()
            self._rsync([f"{self.node.host}:{remote_adapter}/"], f"{tmp}/")
            got = sha256_dir(tmp, "*.safetensors")
            if got != result.adapter_sha256:
                raise RemoteError(f"adapter from {self.node.host} fails its sha256 check: "
                                  f"{got[:12]} here, {result.adapter_sha256[:12]} on the node")
            publish(tmp, local_adapter)
            tmp = None
        finally:
            discard(tmp)

    # -- one trial --------------------------------------------------------------------
    def __call__(self, spec: TrainSpec, callbacks: Sequence[TrainCallback] = (), *, progress: bool = True,
                 timeout_s: float | None = None) -> TrainResult:
        self.timings = {}
        t0 = time.monotonic()
        lay = self.layout()
        self._timed("layout_s", t0)
        remote, key, name = self.remote_spec(spec, lay)
        t0 = time.monotonic()
        self.push(spec, remote, key, name, lay)
        self._timed("push_s", t0)
        t0 = time.monotonic()
        try:
            result = run_training(remote, callbacks, argv=ssh_argv(self.node, self.train_command(lay, name)),
                                  timeout_s=timeout_s, progress=progress, lost_exit_codes=(SSH_LOST,))
        except OutOfMemory as exc:
            if exc.result is not None:
                exc.result = dataclasses.replace(exc.result, adapter_dir=spec.adapter_dir)
            raise
        finally:
            self._timed("train_s", t0)
        t0 = time.monotonic()
        self.fetch(result, remote.adapter_dir, Path(spec.adapter_dir))
        self._timed("fetch_s", t0)
        t0 = time.monotonic()
        try:  # best effort: the adapter is safe here; a node that just vanished fails the next trial
            self._ssh(f"rm -rf -- {shlex.quote(remote.adapter_dir)} {shlex.quote(f'{lay.workdir}/specs/{name}.json')}")
        except (RemoteLost, OSError):
            pass
        self._timed("cleanup_s", t0)
        return dataclasses.replace(result, adapter_dir=spec.adapter_dir)


def remote_lost(trial: Any) -> bool:
    """True for a trial that ended because the node went away (the night falls back to proxy)."""
    return trial.user_attrs.get("result") == "failed:remote_lost"


def proxy_fallback(plan: Any, why: str) -> Any:
    """The night's plan for the trials left once the node is lost: proxy mode, the proxy
    model and its own study (an adapter only fits its base model). `plan`: study.night.Plan."""
    from study.modes import ModeChoice
    from study.storage import study_name

    ms = plan.settings.modes.proxy
    label = "demo" if ms.model == "demo" else Path(ms.model).expanduser().name
    return dataclasses.replace(plan, mode=ModeChoice("proxy", why), model=ms.model, model_label=label,
                               study_name=study_name(plan.settings.study.name_prefix, "proxy", label))
