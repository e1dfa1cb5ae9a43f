"""Shared fixtures. `demo_assets`: the demo model and sessions, built once per test run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # Route mlx's CPU GEMM to OpenBLAS before any test's first matrix product, so the
    # demo build (and every mlx test) runs ~2x faster whatever order tests run in.
    # Best effort, a no-op off Linux; AUTORESEARCH_FAST_BLAS=0 turns it off.
    from common.fastblas import enable

    enable(REPO / ".cache")


@pytest.fixture(scope="session")
def demo_assets():
    """DemoAssets built (or reused from an earlier run) in a cache shared by the test run.

    AUTORESEARCH_TEST_CACHE picks the cache folder (default <repo>/.cache/test-demo) and
    AUTORESEARCH_TEST_PRETRAIN_S the pre-training seconds (default 20).
    """
    from demo import ensure_demo

    cache = Path(os.environ.get("AUTORESEARCH_TEST_CACHE") or REPO / ".cache" / "test-demo")
    seconds = float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20"))
    return ensure_demo(cache, REPO / "council.yaml", pretrain_seconds=seconds, progress=False)


@pytest.fixture(scope="session")
def smollm2_assets():
    """SmolLM2-135M-Instruct converted from the installed GGUF (~15 s once, then cached
    in <repo>/.cache/test-smollm2, or AUTORESEARCH_TEST_CACHE/test-smollm2)."""
    from demo.smollm2 import ensure_smollm2

    base = Path(os.environ.get("AUTORESEARCH_TEST_CACHE") or REPO / ".cache")
    return ensure_smollm2(base / "test-smollm2", REPO / "council.yaml")
