"""prepare(): sessions + synthetic -> cleaned, split, mixed mlx-lm chat files + manifest.

The output folder is named by a hash of everything that decides its content (the inputs'
bytes, the mix ratio, seed, split fractions and PIPELINE_VERSION), so an unchanged night
reuses it. It is built in a temp folder beside its final place and renamed there with
manifest.json written last: a folder with a manifest is complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from common.atomic import atomic_write_json, atomic_write_text, sha256_file
from common.council import load_council
from common.errors import ConfigError

from .clean import clean
from .records import read_sessions, session_files
from .split import SPLITS, assign_splits, mix_train
from .synthetic import synthetic_examples

PIPELINE_VERSION = "corpus-1"
MANIFEST = "manifest.json"
LATEST = "LATEST"
MIX_RANGE = (0.1, 0.9)


@dataclass(frozen=True)
class PreparedData:
    dir: Path        # train.jsonl, valid.jsonl, test.jsonl and manifest.json
    manifest: dict
    hash: str        # of the inputs; dir == out_root / hash[:16]


@dataclass(frozen=True)
class Settings:
    mix_ratio: float
    seed: int
    valid_fraction: float
    test_fraction: float
    include_synthetic: bool

    def check(self) -> None:
        lo, hi = MIX_RANGE
        if not lo <= self.mix_ratio <= hi:
            raise ConfigError(None, "mix_ratio", f"must be in [{lo}, {hi}], got {self.mix_ratio}")
        for key in ("valid_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value <= 0.5:
                raise ConfigError(None, key, f"must be in [0, 0.5], got {value}")


def input_hash(sessions_dir: Path, council_path: Path, settings: Settings) -> tuple[str, dict]:
    """The cache key and the inputs it was made from (names and sha256s)."""
    inputs = {"council": {"path": str(council_path), "sha256": sha256_file(council_path)},
              "sessions": [{"file": p.name, "sha256": sha256_file(p)}
                           for p in session_files(sessions_dir)]}
    key = {"pipeline": PIPELINE_VERSION, "council": inputs["council"]["sha256"],
           "sessions": inputs["sessions"], "settings": settings.__dict__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return digest, inputs


def prepare(sessions_dir: Path, council_path: Path, out_root: Path, *, mix_ratio: float = 0.5,
            seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1,
            include_synthetic: bool = True) -> PreparedData:
    """Build (or reuse) the prepared corpus for these inputs."""
    sessions_dir, council_path, out_root = Path(sessions_dir), Path(council_path), Path(out_root)
    settings = Settings(float(mix_ratio), int(seed), float(valid_fraction), float(test_fraction),
                        bool(include_synthetic))
    settings.check()
    council = load_council(council_path)
    digest, inputs = input_hash(sessions_dir, council_path, settings)
    final = out_root / digest[:16]
    if not (final / MANIFEST).is_file():
        out_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", suffix=".tmp", dir=out_root))
        try:
            _build(tmp, sessions_dir, council, settings, digest, inputs)
            _publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(out_root / LATEST, digest + "\n")
    return _load(final)


def _publish(tmp: Path, final: Path) -> None:
    if final.exists() and not (final / MANIFEST).is_file():
        shutil.rmtree(final, ignore_errors=True)  # a half folder left by older code
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / MANIFEST).is_file():  # lost a race to a complete twin: fine
            raise


def _load(folder: Path) -> PreparedData:
    manifest = json.loads((folder / MANIFEST).read_text())
    return PreparedData(dir=folder, manifest=manifest, hash=manifest["hash"])


def latest(out_root: Path) -> PreparedData | None:
    """The last prepared corpus under out_root (for --skip-prepare), or None."""
    out_root = Path(out_root)
    pointer = out_root / LATEST
    if pointer.is_file():
        folder = out_root / pointer.read_text().strip()[:16]
        if (folder / MANIFEST).is_file():
            return _load(folder)
    done = [p for p in out_root.glob("*/" + MANIFEST)] if out_root.is_dir() else []
    if not done:
        return None
    return _load(max(done, key=lambda p: p.stat().st_mtime).parent)


def _build(folder: Path, sessions_dir: Path, council, settings: Settings, digest: str,
           inputs: dict) -> None:
    files = read_sessions(sessions_dir, council)
    real = [ex for f in files for ex in f.examples]
    synthetic = synthetic_examples(council, settings.seed) if settings.include_synthetic else []
    if not real and not synthetic:
        raise ConfigError(str(sessions_dir), None, "empty corpus: no sessions and nothing generated")
    cleaned = clean(real + synthetic)  # real first: a real example wins a duplicate tie
    splits = assign_splits(cleaned.examples, settings.valid_fraction, settings.test_fraction,
                           settings.seed)
    splits["train"], mix = mix_train(splits["train"], settings.mix_ratio, settings.seed)
    for name in SPLITS:
        lines = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in splits[name])
        atomic_write_text(folder / f"{name}.jsonl", lines)
    for entry, f in zip(inputs["sessions"], files):
        entry.update(lines=f.lines, examples=len(f.examples))
    total = len(real) + len(synthetic)
    manifest = {
        "pipeline_version": PIPELINE_VERSION,
        "hash": digest,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "settings": settings.__dict__,
        "mix_ratio": settings.mix_ratio,
        "mix": mix.as_dict(),
        "raw": {"real": len(real), "synthetic": len(synthetic)},
        "duplicates": {"removed": cleaned.removed, "rate": round(cleaned.removed / total, 4),
                       "by_source": cleaned.removed_by_source,
                       "empty_after_strip": cleaned.empty_after_strip},
        "counts": {name: len(splits[name]) for name in SPLITS},
        "per_split": {name: _cells(splits[name]) for name in SPLITS},
        "train_category_mix": _category_mix(splits["train"]),
    }
    atomic_write_json(folder / MANIFEST, manifest)  # last: its presence means complete


def _cells(examples: list[dict]) -> dict:
    """{agent: {category: {source: n}}}"""
    out: dict = {}
    for (agent, category, source), n in sorted(Counter(
            (e["agent"], e["category"], e["source"]) for e in examples).items()):
        out.setdefault(agent, {}).setdefault(category, {})[source] = n
    return out


def _category_mix(examples: list[dict]) -> dict[str, float]:
    counts = Counter(e["category"] for e in examples)
    total = sum(counts.values()) or 1
    return {c: round(n / total, 4) for c, n in sorted(counts.items())}
