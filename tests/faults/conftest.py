"""Fixtures of the fault-injection suite; the helpers they share with the tests are in
faultlib.py. Every workdir shares the demo model (tests/night_fixtures.py) and the base
model's eval, computed once per demo build and suite (~45 s) and copied into each
workdir's cache, so a night starts its first trial within seconds.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from faultlib import make_fault_workdir, shared_base_eval


@pytest.fixture(scope="session")
def base_eval(demo_assets) -> Path:
    return shared_base_eval(demo_assets)


@pytest.fixture
def fault_workdir(tmp_path, demo_assets, base_eval):
    """make_fault_workdir(name, budget_s=..., overrides=...) under this test's tmp folder."""
    def make(name: str = "night", **kw) -> Path:
        return make_fault_workdir(tmp_path / name, demo_assets, base_eval, **kw)
    return make
