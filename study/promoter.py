"""Atomic promotion and rollback of adapters.

Layout under adapters_root:
    promoted/<id>/     complete copies of gate-clearing adapters (never modified after publish)
    current            relative symlink -> promoted/<id>  (the adapter council-mlx serves)
    history.json       {"events": [...]}: every change of `current`, promote or rollback

Crash safety: a copy is built in a temp folder and verified before it is renamed into
promoted/; `current` is repointed by creating a new link beside it and renaming it over the
old one (rename(2) is atomic on one filesystem). So at any instant `current` is absent
(never promoted), the old complete adapter, or the new complete adapter. history.json is
written last; if a crash falls between the swap and the history write, the symlink is the
truth and the history is one event behind, which rollback tolerates and the next night's
repair_history() records.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json, fsync_dir, sha256_file
from common.errors import ConfigError
from common.procs import pid_alive

PAUSE_ENV = "AUTORESEARCH_TEST_PROMOTE_PAUSE"
PAUSE_TIMEOUT_S = 60.0
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TMP_MARK = ".tmp-"


class PromotionError(RuntimeError):
    """The copy did not match its source: nothing was promoted."""


class _Pauser:
    """Test-only fault-injection points. Unset env var: one dict lookup per promote, no I/O."""

    def __init__(self) -> None:
        folder = os.environ.get(PAUSE_ENV)
        self.folder = Path(folder) if folder else None
        self.n = 0

    def __call__(self, name: str) -> None:
        if self.folder is None:
            return
        self.n += 1
        marker = self.folder / f"step-{self.n}-{name}"
        marker.touch()
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while marker.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{marker} was never released")
            time.sleep(0.005)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, by relative path."""
    return {str(p.relative_to(folder)): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _fsync_tree(folder: Path) -> None:
    # A renamed folder whose file data is still in the page cache is not "complete" after a
    # power loss; flush before publishing.
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(d)


class Promoter:
    def __init__(self, adapters_root: Path | str):
        self.root = Path(adapters_root).expanduser()
        self.promoted = self.root / "promoted"
        self.link = self.root / "current"
        self.history_path = self.root / "history.json"

    # --- reading ---------------------------------------------------------------------------

    def current_id(self) -> str | None:
        if not os.path.islink(self.link):
            if os.path.lexists(self.link):
                raise ConfigError(str(self.link), None, "exists but is not a symlink")
            return None
        return Path(os.readlink(self.link)).name

    def current(self) -> Path | None:
        cid = self.current_id()
        if cid is None:
            return None
        target = self.promoted / cid
        if not target.is_dir():
            raise ConfigError(str(self.link), None, f"points at missing adapter {target}")
        return target.resolve()

    def history(self) -> list[dict[str, Any]]:
        """Every recorded change of `current`, oldest first."""
        if not self.history_path.exists():
            return []
        try:
            data = json.loads(self.history_path.read_text())
            events = data["events"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(str(self.history_path), "events", f"unreadable history: {exc}") from None
        if not isinstance(events, list):
            raise ConfigError(str(self.history_path), "events", "expected a list")
        return events

    def list(self) -> list[dict[str, Any]]:
        """Promotions, oldest first: {id, promoted_at, source, meta, sha256, current}."""
        cid = self.current_id()
        rows = [{k: e.get(k) for k in ("id", "promoted_at", "source", "meta", "sha256")}
                for e in self.history() if e.get("action") == "promote"]
        marked = False
        for row in reversed(rows):
            row["current"] = not marked and row["id"] == cid
            marked = marked or row["current"]
        return rows

    # --- writing ---------------------------------------------------------------------------

    def promote(self, source_dir: Path | str, exp_id: str, meta: dict | None = None) -> Path:
        source = Path(source_dir).expanduser()
        self._check_inputs(source, exp_id, meta)
        pause = _Pauser()
        self.promoted.mkdir(parents=True, exist_ok=True)
        self._sweep_stale()
        events = self.history()
        # The recorded current, not the link: after a crash between swap and history write
        # the link already names this id, and the one before it is the history's last.
        previous = events[-1].get("id") if events else self.current_id()
        dest = self.promoted / exp_id
        want = file_digests(source)
        if dest.exists():
            # A rerun after a crash between publish and swap: reuse the identical copy.
            if file_digests(dest) != want:
                raise ConfigError(str(dest), None, "already promoted with different content")
            if previous == exp_id and self.current_id() == exp_id:
                return dest.resolve()   # already current and recorded: nothing to do
        else:
            tmp = self.promoted / f"{TMP_MARK}{exp_id}-{os.getpid()}"
            pause("copy")
            shutil.copytree(source, tmp, symlinks=False)
            _fsync_tree(tmp)
            pause("verify")
            got = file_digests(tmp)
            if got != want:
                shutil.rmtree(tmp, ignore_errors=True)
                raise PromotionError(f"copy of {source} does not match its source")
            pause("publish")
            os.rename(tmp, dest)
            fsync_dir(self.promoted)

        self._repoint(exp_id, pause)
        sha = {k: v for k, v in want.items() if k.endswith(".safetensors")}
        pause("history")
        self._append({"action": "promote", "id": exp_id, "promoted_at": _now(),
                      "source": str(source), "meta": meta or {}, "sha256": sha,
                      "previous": previous})
        return dest.resolve()

    def repair_history(self) -> dict[str, Any] | None:
        """After a crash between the swap and the history write, the link names an adapter
        the history does not: record it (without the lost meta), so `promote --list` and
        the vault's story agree with what is served. Returns the event it added, if any."""
        cid = self.current_id()
        events = self.history()
        recorded = events[-1].get("id") if events else None
        if cid is None or cid == recorded or not (self.promoted / cid).is_dir():
            return None
        sha = {k: v for k, v in file_digests(self.promoted / cid).items() if k.endswith(".safetensors")}
        event = {"action": "promote", "id": cid, "promoted_at": _now(), "source": None, "meta": {},
                 "sha256": sha, "previous": recorded, "repaired": "the promotion was interrupted before its record"}
        self._append(event)
        return event

    def rollback(self, *, to_base: bool = False) -> Path | None:
        """Undo the promotion that made the current adapter current. With nothing before it,
        to_base=True removes `current` (the base model is served again; the served-model
        probe's last resort) and returns None."""
        cid = self.current_id()
        if cid is None:
            raise ConfigError(str(self.link), None, "nothing is promoted: nothing to roll back")
        target = self._rollback_target(cid)
        if target is None and to_base:
            os.unlink(self.link)          # atomic: current is the old adapter or absent
            fsync_dir(self.root)
            self._append({"action": "rollback", "id": None, "promoted_at": _now(), "from": cid})
            return None
        if target is None:
            raise ConfigError(str(self.history_path), None, f"no earlier promoted adapter before {cid!r}")
        if not (self.promoted / target).is_dir():
            raise ConfigError(str(self.promoted / target), None, "earlier adapter is missing on disk")
        pause = _Pauser()
        self._repoint(target, pause)
        pause("history")
        self._append({"action": "rollback", "id": target, "promoted_at": _now(), "from": cid})
        return (self.promoted / target).resolve()

    # --- internals -------------------------------------------------------------------------

    def _check_inputs(self, source: Path, exp_id: str, meta: dict | None) -> None:
        if not isinstance(exp_id, str) or not ID_RE.match(exp_id) or TMP_MARK in exp_id:
            raise ConfigError(None, "exp_id", f"unsafe experiment id {exp_id!r}")
        if not source.is_dir():
            raise ConfigError(str(source), None, "adapter folder does not exist")
        if not any(source.rglob("*.safetensors")):
            raise ConfigError(str(source), None, "no *.safetensors: not a complete adapter")
        try:
            json.dumps(meta or {})
        except (TypeError, ValueError) as exc:
            raise ConfigError(None, "meta", f"not JSON-serialisable: {exc}") from None

    def _rollback_target(self, cid: str) -> str | None:
        events = self.history()
        recorded = events[-1].get("id") if events else None
        if recorded != cid:
            # Crashed between the swap and the history write: the recorded current is the
            # one that came before.
            return recorded
        for event in reversed(events):
            if event.get("action") == "promote" and event.get("id") == cid:
                return event.get("previous")
        return None

    def _repoint(self, exp_id: str, pause: _Pauser) -> None:
        if os.path.lexists(self.link) and not os.path.islink(self.link):
            raise ConfigError(str(self.link), None, "exists but is not a symlink; refusing to replace it")
        tmp_link = self.root / f"current{TMP_MARK}{os.getpid()}"
        pause("link")
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(os.path.join("promoted", exp_id), tmp_link)   # relative: the tree can move
        pause("swap")
        os.replace(tmp_link, self.link)
        fsync_dir(self.root)

    def _append(self, event: dict[str, Any]) -> None:
        atomic_write_json(self.history_path, {"events": [*self.history(), event]})

    def _sweep_stale(self) -> None:
        """Remove temp copies and links left by a crashed promote (their process is gone)."""
        candidates = [*self.promoted.glob(f"{TMP_MARK}*"), *self.root.glob(f"current{TMP_MARK}*")]
        for path in candidates:
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

