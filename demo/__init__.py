"""The embedded default: a tiny local model and sample sessions, so a fresh machine runs
the whole loop with no download. `ensure_demo` builds them once and caches them."""
from .build import BUILD_VERSION, DemoAssets, ensure_demo

__all__ = ["BUILD_VERSION", "DemoAssets", "ensure_demo"]
