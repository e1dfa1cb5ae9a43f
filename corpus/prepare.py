"""prepare(): sessions + synthetic -> cleaned, deduplicated, balanced, split, mixed mlx-lm
chat files + manifest.

    read sessions ─► templates (+ LLM paraphrases) ─► clean (normalise, <think>, PII,
    drops) ─► dedupe (exact + MinHash near, clusters) ─► caps per source ─► splits by
    cluster ─► mix train to DATA_MIX_RATIO ─► caps on each split ─► files + manifest

The output folder is named by a hash of everything that decides its content (the inputs'
bytes, every setting below and PIPELINE_VERSION), so an unchanged night reuses it and
each mix ratio gets its own folder, built once.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from common.atomic import atomic_write_json, atomic_write_text, sha256_file
from common.council import Council, load_council
from common.errors import ConfigError

from . import balance, contamination
from .clean import clean
from .dedupe import DedupeSettings, dedupe
from .paraphrase import KEEP, GeneratorSettings, paraphrase
from .records import MALFORMED_REASONS, read_sessions, session_files
from .split import SPLITS, UNUSED, assign_splits, mix_train
from .store import LATEST, MANIFEST, PreparedData, is_complete, latest, load, publish
from .synthetic import synthetic_examples

PIPELINE_VERSION = "corpus-2"
MIX_RANGE = (0.1, 0.9)
DEFAULT_CAPS = {"identity": 0.4}
FILES = (*SPLITS, UNUSED)

__all__ = ["DEFAULT_CAPS", "PIPELINE_VERSION", "PreparedData", "Settings", "latest", "prepare"]


@dataclass(frozen=True)
class Settings:
    mix_ratio: float
    seed: int = 0
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    include_synthetic: bool = True
    near_dup_threshold: float = 0.8
    shingle_size: int = 3
    num_perm: int = 128
    caps: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    max_chars: int = 6000
    generator: GeneratorSettings = GeneratorSettings()

    def check(self, council: Council) -> None:
        lo, hi = MIX_RANGE
        if not lo <= self.mix_ratio <= hi:
            raise ConfigError(None, "mix_ratio", f"must be in [{lo}, {hi}], got {self.mix_ratio}")
        for key in ("valid_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value <= 0.5:
                raise ConfigError(None, key, f"must be in [0, 0.5], got {value}")
        if not 0.3 <= self.near_dup_threshold <= 1.0:
            raise ConfigError(None, "near_dup_threshold",
                              f"must be in [0.3, 1.0], got {self.near_dup_threshold}")
        for key, low in (("shingle_size", 1), ("num_perm", 16), ("max_chars", 1)):
            if getattr(self, key) < low:
                raise ConfigError(None, key, f"must be >= {low}, got {getattr(self, key)}")
        balance.check_caps(self.caps, council.names)
        self.generator.check()

    def key(self) -> dict:
        return {**asdict(self), "caps": dict(sorted(self.caps.items()))}


def input_hash(sessions_dir: Path, council_path: Path, settings: Settings) -> tuple[str, dict]:
    """The cache key and the inputs it was made from (names and sha256s)."""
    inputs = {"council": {"path": str(council_path), "sha256": sha256_file(council_path)},
              "sessions": [{"file": p.name, "sha256": sha256_file(p)}
                           for p in session_files(sessions_dir)]}
    key = {"pipeline": PIPELINE_VERSION, "council": inputs["council"]["sha256"],
           "sessions": inputs["sessions"], "settings": settings.key()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return digest, inputs


def prepare(sessions_dir: Path, council_path: Path, out_root: Path, *, mix_ratio: float = 0.5,
            seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1,
            include_synthetic: bool = True, near_dup_threshold: float = 0.8,
            shingle_size: int = 3, num_perm: int = 128,
            caps: Mapping[str, float] | None = None, max_chars: int = 6000,
            generator_model: str = "", generator_api_base: str = "",
            generator_api_key_env: str = "", generator_per_example: int = 1,
            generator_limit: int = 100, generator_temperature: float = 0.7,
            generator_max_tokens: int = 64, generator_timeout_s: float = 30.0,
            suite_cases: Iterable[Any] | None = None, contamination_n: int = 8,
            contamination_threshold: float = 0.5) -> PreparedData:
    """Build (or reuse) the prepared corpus for these inputs.

    caps: None -> DEFAULT_CAPS; {} -> no caps. suite_cases: eval cases to check for
    contamination; the report goes into the manifest (it does not stop anything here:
    the night decides).
    """
    sessions_dir, council_path, out_root = Path(sessions_dir), Path(council_path), Path(out_root)
    generator = GeneratorSettings(generator_model, generator_api_base, generator_api_key_env,
                                  int(generator_per_example), int(generator_limit),
                                  float(generator_temperature), int(generator_max_tokens),
                                  float(generator_timeout_s))
    council = load_council(council_path)
    settings = Settings(float(mix_ratio), int(seed), float(valid_fraction), float(test_fraction),
                        bool(include_synthetic), float(near_dup_threshold), int(shingle_size),
                        int(num_perm),
                        balance.check_caps(DEFAULT_CAPS if caps is None else dict(caps), council.names),
                        int(max_chars), generator)
    settings.check(council)
    if suite_cases is not None:
        contamination.check_settings(contamination_n, contamination_threshold)
    digest, inputs = input_hash(sessions_dir, council_path, settings)
    final = out_root / digest[:16]
    if not is_complete(final):
        out_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", suffix=".tmp", dir=out_root))
        try:
            _build(tmp, sessions_dir, council, settings, digest, inputs)
            publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(out_root / LATEST, digest + "\n")
    data = load(final)
    if suite_cases is not None:
        report = contamination.check(data, suite_cases, n=contamination_n,
                                     threshold=contamination_threshold)
        data = contamination.record(data, report)
    return data


def _row(example: dict) -> str:
    return json.dumps({k: v for k, v in example.items() if k != KEEP}, ensure_ascii=False) + "\n"


@dataclass
class _Run:
    """What each stage did, for the manifest."""
    files: list
    raw: list[dict]
    para: Any
    cleaned: Any
    deduped: Any
    mix: Any
    cuts: list = field(default_factory=list)


def _pipeline(sessions_dir: Path, council: Council, settings: Settings) -> tuple[dict, _Run]:
    """Every stage, in order: the examples per file (train, valid, test, unused)."""
    files = read_sessions(sessions_dir, council)
    # Real before synthetic (stable), so a real example wins a duplicate tie.
    sessions = sorted((ex for f in files for ex in f.examples), key=lambda e: e["source"] != "real")
    templates = synthetic_examples(council, settings.seed) if settings.include_synthetic else []
    para = paraphrase(templates, settings.generator, settings.seed)
    raw = sessions + templates + para.examples
    if not raw:
        raise ConfigError(str(sessions_dir), None, "empty corpus: no sessions and nothing generated")
    cleaned = clean(raw, settings.max_chars)
    deduped = dedupe(cleaned.examples, DedupeSettings(settings.near_dup_threshold,
                                                      settings.shingle_size, settings.num_perm))
    run = _Run(files, raw, para, cleaned, deduped, mix=None)
    # Caps per source before splitting, so valid/test share train's shape and every mix
    # of two capped sources is within the caps too.
    pool = []
    for source in ("real", "synthetic"):
        kept, cut = balance.enforce([e for e in deduped.examples if e["source"] == source],
                                    settings.caps, source, settings.seed)
        pool += kept
        run.cuts += cut
    splits = assign_splits(pool, settings.valid_fraction, settings.test_fraction, settings.seed)
    splits["train"], unused, run.mix = mix_train(splits["train"], settings.mix_ratio, settings.seed)
    for name in SPLITS:  # rounding in the split or mix can tip a share over: caps have the last word
        before = splits[name]
        splits[name], cut = balance.enforce(before, settings.caps, name, settings.seed)
        run.cuts += cut
        if name == "train" and cut:
            left = {id(e) for e in splits[name]}
            unused += [e for e in before if id(e) not in left]
    splits[UNUSED] = unused
    balance.warn(run.cuts)
    return splits, run


def _build(folder: Path, sessions_dir: Path, council: Council, settings: Settings, digest: str,
           inputs: dict) -> None:
    splits, run = _pipeline(sessions_dir, council, settings)
    for name in FILES:
        atomic_write_text(folder / f"{name}.jsonl", "".join(_row(e) for e in splits[name]))
    for entry, f in zip(inputs["sessions"], run.files):
        entry.update(lines=f.lines, examples=len(f.examples), malformed=sum(f.malformed.values()))
    manifest = _manifest(splits, run, settings, digest, inputs)
    atomic_write_json(folder / MANIFEST, manifest)  # last: its presence means complete


def _manifest(splits: dict, run: _Run, settings: Settings, digest: str, inputs: dict) -> dict:
    malformed = Counter()
    for f in run.files:
        malformed.update(f.malformed)
    train = splits["train"]
    return {
        "pipeline_version": PIPELINE_VERSION,
        "hash": digest,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "settings": settings.key(),
        "mix_ratio": settings.mix_ratio,
        # after the caps' last word: what train really holds
        "mix": {**run.mix.as_dict(), "achieved": _real_share(train),
                "real_used": sum(e["source"] == "real" for e in train),
                "synthetic_used": sum(e["source"] != "real" for e in train)},
        "raw": {"real": sum(e["source"] == "real" for e in run.raw),
                "synthetic": sum(e["source"] == "synthetic" for e in run.raw),
                "by_method": dict(Counter(e.get("method", "session") for e in run.raw))},
        "malformed": {"by_reason": {r: malformed[r] for r in MALFORMED_REASONS},
                      "lines": [p for f in run.files for p in f.problems][:20]},
        "cleaning": run.cleaned.as_dict(),
        "duplicates": run.deduped.as_dict(),
        "balance": {"caps": dict(sorted(settings.caps.items())),
                    "cuts": [c.as_dict() for c in run.cuts]},
        "generator": {"enabled": settings.generator.enabled, **run.para.as_dict()},
        "counts": {name: len(splits[name]) for name in FILES},
        "per_split": {name: _cells(splits[name]) for name in SPLITS},
        "shares": {name: {f: balance.shares(splits[name], f)
                          for f in ("category", "agent", "source")} for name in SPLITS},
        "train_category_mix": balance.shares(train, "category"),
    }


def _real_share(examples: list[dict]) -> float:
    return round(sum(e["source"] == "real" for e in examples) / len(examples), 4) if examples else 0.0


def _cells(examples: list[dict]) -> dict:
    """{agent: {category: {source: n}}}"""
    out: dict = {}
    for (agent, category, source), n in sorted(Counter(
            (e["agent"], e["category"], e["source"]) for e in examples).items()):
        out.setdefault(agent, {}).setdefault(category, {})[source] = n
    return out
