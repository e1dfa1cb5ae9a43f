"""Each worker's `adapters/current` follows what the study says is promoted.

The study user attr `baseline` = {id, host, adapter, ...} names the promoted adapter and
where it lives. `[workers] adapters` says how this machine gets it:
  "shared": [paths] adapters is one folder every worker mounts; the winner's Promoter
            already copied and repointed there, so only a lagging `current` is repointed.
  "fetch":  each machine keeps its own adapters folder; the adapter is copied with rsync
            over ssh from the worker that trained it (host from the attr, mapped through
            `[workers] hosts` to an ssh Host), then promoted here with the usual atomic swap.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

from common.errors import ConfigError
from study.dbmutex import db_mutex
from study.promoter import Promoter
from study.workers import BaselineRef, read_baseline

# Paths rsync sends to the other side's shell (old rsyncs do not quote them).
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+,@=~-]+$")


@dataclass(frozen=True)
class WorkerOptions:
    adapters: Literal["shared", "fetch"] = "shared"
    ssh_config: str = ""                 # ssh -F for fetching; empty: ssh's own
    hosts: dict[str, str] = field(default_factory=dict)   # hostname in the study → ssh Host
    accept_new_host_key: bool = False
    fetch_timeout_s: float = 600.0


def worker_options(settings: Any) -> WorkerOptions:
    """From Settings' [workers] table when it has one (defaults otherwise), or as given."""
    if isinstance(settings, WorkerOptions):
        return settings
    w = getattr(settings, "workers", None)
    if w is None:
        return WorkerOptions()
    root = getattr(settings, "root", None)
    cfg = w.ssh_config
    if cfg and root is not None and not Path(cfg).expanduser().is_absolute():
        cfg = str(Path(root) / cfg)
    return WorkerOptions(adapters=w.adapters, ssh_config=str(Path(cfg).expanduser()) if cfg else "",
                         hosts=dict(w.hosts), accept_new_host_key=w.accept_new_host_key)


def _fetch(ref: BaselineRef, opts: WorkerOptions, into: Path) -> str:
    """rsync the promoted folder from the worker that trained it into `into`; returns host."""
    from study.remote import Node, rsync_argv   # imports train_core (mlx): only when fetching
    host = opts.hosts.get(ref.host, ref.host)
    if not ref.adapter or not _SAFE_PATH.match(ref.adapter):
        raise ConfigError(None, "baseline.adapter", f"cannot fetch {ref.id}: unusable path {ref.adapter!r}")
    node = Node(host=host, model="", ssh_config=opts.ssh_config, accept_new_host_key=opts.accept_new_host_key)
    argv = rsync_argv(node, [f"{host}:{ref.adapter.rstrip('/')}/"], str(into) + "/")
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=opts.fetch_timeout_s,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"fetching {ref.id} from {host}: no end in {opts.fetch_timeout_s:.0f} s") from None
    if out.returncode != 0:
        raise RuntimeError(f"fetching {ref.id} from {host}:{ref.adapter} failed "
                           f"(rsync {out.returncode}): {' '.join(out.stderr.split())[-300:]}")
    return host


def _meta(ref: BaselineRef, source: str) -> dict:
    return {"score": ref.score, "trial": ref.trial, "followed_from": source,
            "promoted_by": ref.raw.get("worker")}


def _follow_fetched(ref: BaselineRef, promoter: Promoter, opts: WorkerOptions) -> None:
    local = promoter.promoted / ref.id
    if local.is_dir():                              # fetched before (a rollback since)
        promoter.promote(local, ref.id, meta=_meta(ref, str(local)))
        return
    if ref.host == socket.gethostname() and ref.host not in opts.hosts and Path(ref.adapter).is_dir():
        promoter.promote(ref.adapter, ref.id, meta=_meta(ref, ref.adapter))   # same machine
        return
    promoter.root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=promoter.root))
    try:
        host = _fetch(ref, opts, tmp)
        promoter.promote(tmp, ref.id, meta=_meta(ref, f"{host}:{ref.adapter}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _score_of(study: optuna.Study, promoter: Promoter, exp_id: str) -> tuple[float | None, int | None]:
    trial = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("experiment_id") == exp_id), None)
    if trial is not None and trial.user_attrs.get("score") is not None:
        return float(trial.user_attrs["score"]), trial.number
    f = promoter.promoted / exp_id / "eval_results.json"
    if f.exists():
        from evaluation import read_eval_results
        return float(read_eval_results(f)["overall"]), trial.number if trial is not None else None
    return None, trial.number if trial is not None else None


def reconcile_current(study: optuna.Study, promoter: Promoter, storage_url: str) -> dict | None:
    """This machine's `current` is ahead of the study when a promotion was killed between
    the swap and the study's `baseline` attr, or when the user ran `study.promote
    --rollback` here. Record it in the study, but only if the study still names what this
    machine's history says came before (compare-and-swap: another worker's later
    promotion wins, and sync_current then makes `current` follow it). Returns the new
    attr, or None when nothing was recorded. Call before sync_current at night start."""
    with db_mutex(storage_url, f"promote:{study.study_name}"):
        ref = read_baseline(study)
        recorded, cur = (ref.id if ref else None), promoter.current_id()
        if cur == recorded:
            return None
        events = promoter.history()
        last = events[-1] if events else {}
        if cur is None:
            # `study.promote --rollback` of the first promotion: the base model is served again.
            if recorded is None or last.get("action") != "rollback" or last.get("from") != recorded:
                return None
            attr = {"id": None, "previous": recorded, "rolled_back": "study.promote --rollback",
                    "host": socket.gethostname(), "adapter": ""}
            study.set_user_attr("baseline", attr)
            return attr
        if last.get("id") == cur:      # a recorded promote or rollback: what came before it
            before = last.get("previous") if last.get("action") == "promote" else last.get("from")
        else:                          # killed between the swap and history.json: the last recorded
            before = last.get("id")
        if before != recorded:
            return None
        score, number = _score_of(study, promoter, cur)
        attr = {"id": cur, "score": score, "trial": number, "previous": recorded or "base",
                "host": socket.gethostname(), "adapter": str(promoter.promoted / cur),
                "repaired": last.get("action")}
        study.set_user_attr("baseline", attr)
        return attr


def sync_current(study: optuna.Study, promoter: Promoter, settings: Any,
                 storage_url: str | None = None) -> str | None:
    """Make this machine's `current` the study's promoted adapter; returns its id (None:
    nothing promoted). Call at night start and after each trial."""
    opts = worker_options(settings)
    ref = read_baseline(study)
    if ref is None or promoter.current_id() == ref.id:
        return promoter.current_id()
    if opts.adapters == "fetch":
        _follow_fetched(ref, promoter, opts)
        return ref.id
    src = promoter.promoted / ref.id
    if not src.is_dir():
        raise ConfigError(getattr(settings, "file", None), "workers.adapters",
                          f"'shared', but {src} does not exist: is [paths] adapters the same shared "
                          f"folder on every worker? (else use adapters = \"fetch\")")
    url = storage_url or (settings.storage_url() if hasattr(settings, "storage_url") else None)
    if url is None:
        promoter.promote(src, ref.id, meta=_meta(ref, str(src)))
        return ref.id
    # In a shared folder a concurrent promotion must not interleave with this repoint.
    with db_mutex(url, f"promote:{study.study_name}"):
        ref = read_baseline(study)
        if ref is not None and promoter.current_id() != ref.id:
            promoter.promote(promoter.promoted / ref.id, ref.id, meta=_meta(ref, str(src)))
    return ref.id if ref else None
