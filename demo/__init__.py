"""The embedded default: a local model and sample sessions, so a fresh machine runs the
whole loop with no download. `ensure_model` builds them once and caches them: "demo" is a
tiny model pre-trained here (demo/build.py), "smollm2" the real SmolLM2-135M-Instruct
converted from the installed package (demo/smollm2.py)."""
from pathlib import Path

from common.errors import ConfigError

from .build import BUILD_VERSION, DemoAssets, ensure_demo

DEMO_MODELS = ("demo", "smollm2")


def ensure_model(name: str, cache_dir: Path, council_path: Path, *, pretrain_seconds: float = 100.0,
                 seed: int = 0, progress: bool = True, force: bool = False) -> DemoAssets:
    """The named demo model and its sessions (pretrain_seconds and progress: the tiny one only)."""
    if name == "smollm2":
        from .smollm2 import ensure_smollm2
        return ensure_smollm2(cache_dir, council_path, seed=seed, force=force)
    if name == "demo":
        return ensure_demo(cache_dir, council_path, pretrain_seconds=pretrain_seconds, seed=seed,
                           progress=progress, force=force)
    raise ConfigError(None, "demo.model", f"unknown demo model {name!r} (one of {', '.join(DEMO_MODELS)})")


def check_model(name: str) -> None:
    """What a demo model needs before a night starts (cheap, nothing built): ConfigError if missing."""
    if name == "smollm2":
        from .smollm2 import find_gguf
        find_gguf()


__all__ = ["check_model", "BUILD_VERSION", "DEMO_MODELS", "DemoAssets", "ensure_demo", "ensure_model"]
