"""A real one-trial night on SmolLM2-135M-Instruct: `python -m study.nightly --demo
--demo-model smollm2`, the same code paths as the owner's model (chat template, real
replies, float32 LoRA on CPU), with budgets cut so it takes a few minutes on 2 cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from netutil import free_port
from night_fixtures import link_demo_cache, make_workdir, stop_managed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_one_trial_smollm2_night(tmp_path, smollm2_assets):
    wd = make_workdir(tmp_path / "night", overrides={
        # 8 steps (ITERS 800 x 0.01) at most 40 s; short replies: the eval's 210 cases dominate
        "budget_s = 300\n": "budget_s = 40\n", "iters_scale = 0.05": "iters_scale = 0.01",
        "max_tokens = 32": "max_tokens = 12",
        # council-mlx as a real mlx_lm server on SmolLM2: started after the verdict, probed
        'backend = "none"': 'backend = "managed"', "port = 8765": f"port = {free_port()}"})
    link_demo_cache(wd, smollm2_assets)
    try:
        done = subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(wd / "autoresearch.toml"),
                               "--demo", "--demo-model", "smollm2", "--no-progress", "--max-trials", "1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=1200)
    finally:
        stop_managed(wd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = pd.read_csv(wd / "results.tsv", sep="\t")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["model"] == "smollm2" and row["mode"] == "proxy"
    assert row["result"] in {"kept", "reverted", "veto_jailbreak", "veto_regression"}, row["result"]
    # The trial trained the converted model (its sha256 recorded) and was scored on real replies.
    adapter = next((wd / "adapters-experimental").glob("*/adapter_config.json"))
    cfg = json.loads(adapter.read_text())
    assert cfg["base_model"]["path"].endswith("/model")
    results = json.loads((adapter.parent / "eval_results.json").read_text())
    assert results["repro"]["base_model"]["sha256"] == cfg["base_model"]["sha256"]
    replies = [c["output"] for c in results["cases"] if c["method"] != "loglik"]
    assert replies and sum(bool(r.strip()) for r in replies) > len(replies) * 0.8
    assert not any("<|im_end|>" in r for r in replies)   # generation stopped at the eos token
    assert 0.0 < results["overall"] < 1.0
    assert "smollm2" in done.stdout
    assert "serving" in done.stdout and "probe" in done.stdout   # the base model served, probed
    # Linux CPU: the night's matrix products went through OpenBLAS (taken before the first
    # mlx import, or not at all); elsewhere the line is absent.
    from common.fastblas import enable
    assert ("mlx CPU matrix products: OpenBLAS" in done.stdout) == enable()
