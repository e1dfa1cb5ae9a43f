"""eval_results.json: build from scored cases, write atomically with a `.sha256`
trailer, read back verified. Also THE definition of a model's and an adapter's sha256.

Layout (DESIGN §3): overall, per_category, per_agent, per_agent_category (all over dev
cases), holdout {overall, per_category, per_agent}, labels (dev label counts), cases
[{id, agent, category, split, score, label, latency_ms, output, explanation, method,
tokens {prompt, completion}}], skipped [{id, agent, category, split, skipped}] (cases
not scored, with why: e.g. a judge case without a judge; never counted as 0), latency_ms
{mean, p50, p95, per_agent {agent: {mean, p50, p95, n}}}, tokens {prompt, completion,
total, per_agent}, complete (False for the partial results of a run stopped by its
budget), repro {git_commit, mlx, mlx_lm, base_model {path, sha256}, adapter {path,
sha256}, seed, max_tokens, ...}, n_cases, n_skipped, elapsed_s, cases_per_s.
"""
from __future__ import annotations

import json
import math
import subprocess
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from common.atomic import atomic_write_json, atomic_write_text, sha256_dir, sha256_file
from common.council import CATEGORIES
from common.errors import ConfigError

_SHA_CACHE: dict[tuple[Any, ...], str] = {}


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.safetensors") if p.is_file())


def model_sha256(model_dir: str | Path) -> str:
    """The base model's identity: sha256 of `model.safetensors` when it is the only weight
    file, else sha256_dir over every `*.safetensors` (sorted by name). train_core records
    this in adapter_config.json; the eval refuses an adapter whose record differs.
    Cached per process by (path, names, sizes, mtimes): a 35B model is ~70 GB to hash."""
    root = Path(model_dir)
    files = _weight_files(root) if root.is_dir() else []
    if not files:
        raise ConfigError(str(root), None, "no *.safetensors weight files in the model folder")
    key = (str(root.resolve()),) + tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _SHA_CACHE:
        only = files[0]
        single = len(files) == 1 and only.parent == root and only.name == "model.safetensors"
        _SHA_CACHE[key] = sha256_file(only) if single else sha256_dir(root, "*.safetensors")
    return _SHA_CACHE[key]


def adapter_sha256(adapter_dir: str | Path) -> str:
    """sha256_dir over the adapter folder's `*.safetensors`."""
    root = Path(adapter_dir)
    if not _weight_files(root):
        raise ConfigError(str(root), None, "no *.safetensors in the adapter folder")
    return sha256_dir(root, "*.safetensors")


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def repro_info(model: str, model_sha: str, adapter: str | None, adapter_sha: str | None,
               seed: int, max_tokens: int) -> dict[str, Any]:
    return {"git_commit": git_commit(), "mlx": _version("mlx"), "mlx_lm": _version("mlx-lm"),
            "base_model": {"path": str(model), "sha256": model_sha},
            "adapter": {"path": str(adapter) if adapter else None, "sha256": adapter_sha},
            "seed": seed, "max_tokens": max_tokens}


# ---------------------------------------------------------------- aggregation

def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _by(rows: list[dict[str, Any]], key: str, order: Iterable[str]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r["score"])
    keys = [k for k in order if k in groups] + sorted(k for k in groups if k not in order)
    return {k: _mean(groups[k]) for k in keys}


def summarize(rows: list[dict[str, Any]], agents: list[str]) -> dict[str, Any]:
    """Means over `rows` (one split): overall, per category, per agent, per agent×category."""
    per_ac = {a: _by([r for r in rows if r["agent"] == a], "category", CATEGORIES)
              for a in _by(rows, "agent", agents)}
    return {"overall": _mean([r["score"] for r in rows]),
            "per_category": _by(rows, "category", CATEGORIES),
            "per_agent": _by(rows, "agent", agents),
            "per_agent_category": per_ac}


def _quantile(xs: list[float], q: float) -> float | None:
    """Nearest-rank quantile (no interpolation: a p95 is a latency some case really had)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _lat(xs: list[float]) -> dict[str, Any]:
    mean = _mean(xs)
    return {"mean": None if mean is None else round(mean, 2), "p50": _quantile(xs, 0.5),
            "p95": _quantile(xs, 0.95), "n": len(xs)}


def latency_summary(rows: list[dict[str, Any]], agents: Iterable[str]) -> dict[str, Any]:
    """Per-case latency over all splits, overall and per agent (milliseconds)."""
    by_agent: dict[str, list[float]] = {}
    for r in rows:
        if r.get("latency_ms") is not None:
            by_agent.setdefault(r["agent"], []).append(float(r["latency_ms"]))
    order = [a for a in agents if a in by_agent] + sorted(a for a in by_agent if a not in agents)
    return {**_lat([x for a in order for x in by_agent[a]]), "per_agent": {a: _lat(by_agent[a]) for a in order}}


def token_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = sum(int((r.get("tokens") or {}).get("prompt", 0)) for r in rows)
    completion = sum(int((r.get("tokens") or {}).get("completion", 0)) for r in rows)
    per_agent: dict[str, int] = {}
    for r in rows:
        t = r.get("tokens") or {}
        per_agent[r["agent"]] = per_agent.get(r["agent"], 0) + int(t.get("prompt", 0)) + int(t.get("completion", 0))
    return {"prompt": prompt, "completion": completion, "total": prompt + completion, "per_agent": per_agent}


def build_results(rows: list[dict[str, Any]], agents: list[str], repro: dict[str, Any],
                  elapsed_s: float, *, skipped: Iterable[dict[str, Any]] = (),
                  complete: bool = True) -> dict[str, Any]:
    agents = list(agents)
    skipped = list(skipped)
    dev = [r for r in rows if r["split"] == "dev"]
    hold = summarize([r for r in rows if r["split"] == "holdout"], agents)
    hold.pop("per_agent_category")
    return {**summarize(dev, agents), "holdout": hold,
            "labels": dict(Counter(r["label"] for r in dev).most_common()),
            "n_cases": len(rows), "n_dev": len(dev), "n_holdout": len(rows) - len(dev),
            "n_skipped": len(skipped), "complete": complete,
            "elapsed_s": round(elapsed_s, 3),
            "cases_per_s": round(len(rows) / elapsed_s, 3) if elapsed_s > 0 else None,
            "latency_ms": latency_summary(rows, agents), "tokens": token_summary(rows),
            "repro": repro, "cases": rows, "skipped": skipped}


# ---------------------------------------------------------------- files

def trailer_path(path: str | Path) -> Path:
    return Path(f"{path}.sha256")


def write_eval_results(path: str | Path, results: dict[str, Any]) -> None:
    """JSON first, then `<path>.sha256` in `sha256sum` format: a crash between the two
    leaves a mismatch that read_eval_results refuses, never a silently wrong file."""
    path = Path(path)
    atomic_write_json(path, results)
    atomic_write_text(trailer_path(path), f"{sha256_file(path)}  {path.name}\n")


def read_eval_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    trailer = trailer_path(path)
    if not path.is_file():
        raise ConfigError(str(path), None, "file not found")
    if not trailer.is_file():
        raise ConfigError(str(trailer), None, "sha256 trailer not found")
    recorded = (trailer.read_text().split() or [""])[0].lower()
    actual = sha256_file(path)
    if recorded != actual:
        raise ConfigError(str(path), "sha256",
                          f"does not match its trailer (file {actual[:12]}…, trailer {recorded[:12]}…)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), None, f"not JSON: {exc.msg}") from None
