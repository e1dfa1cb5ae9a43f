"""Prepared corpora on disk: `<out_root>/<hash[:16]>/` holding train/valid/test.jsonl (mlx-lm
chat format), unused.jsonl (train-pool examples the mix left out) and manifest.json.

A folder is built in a temp folder beside its final place and renamed there, with
manifest.json written last: a folder with a manifest is complete. `LATEST` names the
last prepared one (for --skip-prepare).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from common.atomic import atomic_write_json

MANIFEST = "manifest.json"
LATEST = "LATEST"


@dataclass(frozen=True)
class PreparedData:
    dir: Path        # train.jsonl, valid.jsonl, test.jsonl, unused.jsonl and manifest.json
    manifest: dict
    hash: str        # of the inputs and settings; dir == out_root / hash[:16]

    def rows(self, split: str) -> list[dict]:
        path = self.dir / f"{split}.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load(folder: Path) -> PreparedData:
    manifest = json.loads((folder / MANIFEST).read_text())
    return PreparedData(dir=folder, manifest=manifest, hash=manifest["hash"])


def is_complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def publish(tmp: Path, final: Path) -> None:
    if final.exists() and not is_complete(final):
        shutil.rmtree(final, ignore_errors=True)  # a half folder left by older code
    try:
        os.replace(tmp, final)
    except OSError:
        if not is_complete(final):  # lost a race to a complete twin: fine
            raise


def latest(out_root: Path) -> PreparedData | None:
    """The last prepared corpus under out_root (for --skip-prepare), or None."""
    out_root = Path(out_root)
    pointer = out_root / LATEST
    if pointer.is_file():
        folder = out_root / pointer.read_text().strip()[:16]
        if is_complete(folder):
            return load(folder)
    done = [p for p in out_root.glob("*/" + MANIFEST)] if out_root.is_dir() else []
    if not done:
        return None
    return load(max(done, key=lambda p: p.stat().st_mtime).parent)


def update_manifest(data: PreparedData, key: str, value) -> PreparedData:
    """Add one entry to a published manifest (atomically: still complete at every instant)."""
    manifest = {**data.manifest, key: value}
    atomic_write_json(data.dir / MANIFEST, manifest)
    return replace(data, manifest=manifest)
