"""Atomic file writes: temp file in the same folder, fsync, rename.

A crash at any instant leaves either the old file or the complete new one, never half.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _read_umask()


def fsync_dir(path: Path) -> None:
    """Makes a rename inside `path` durable; some filesystems refuse fsync on a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600; a results file or vault entry should read like any other file.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def sweep_temp_files(folder: str | os.PathLike, *, recursive: bool = False, older_than_s: float = 600.0) -> list[Path]:
    """Removes the `.<name>.<random>.tmp` files atomic_write_bytes leaves when its writer is
    killed mid-write; returns them. Only files older than `older_than_s`: a younger one may
    be another worker's write in progress."""
    root = Path(folder)
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    found = root.rglob(".*.tmp") if recursive else root.glob(".*.tmp")
    removed = []
    for f in found:
        try:
            if f.is_file() and not f.is_symlink() and f.stat().st_mtime < cutoff:
                f.unlink()
                removed.append(f)
        except FileNotFoundError:   # swept by another worker meanwhile
            pass
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | os.PathLike, pattern: str = "*") -> str:
    """A digest of every file's name and content under `path` (sorted, so stable)."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob(pattern) if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()
