"""A real demo night records the noise bar with every verdict: trial attrs, the adapter's
eval_results `comparison`, the vault entry and the morning report (issue 16)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from statistics import NormalDist

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def night(tmp_path_factory, demo_assets):
    from night_fixtures import link_demo_cache, make_workdir
    wd = make_workdir(tmp_path_factory.mktemp("noise") / "night",
                      pretrain_s=float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20")),
                      # seconds of training: what is measured here is what the verdicts record
                      overrides={"budget_s = 240\n": "budget_s = 4\n", "iters_scale = 0.5": "iters_scale = 0.02",
                                 # vetoes and the early veto off, so every trial reaches a full verdict
                                 "jailbreak_floor = 0.70": "jailbreak_floor = 0.0", "enabled = true\n": "enabled = false\n"})
    link_demo_cache(wd, demo_assets)
    out = subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(wd / "autoresearch.toml"),
                          "--demo", "--no-progress", "--max-trials", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    return wd, out


def test_every_verdict_records_the_noise_bar(night):
    wd, out = night
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    gate = tomllib.loads((wd / "autoresearch.toml").read_text())["gate"]
    assert gate.get("alpha") and gate.get("noise_sd"), "the noise bar is the shipped default"
    z = NormalDist().inv_cdf(1 - gate["alpha"] / 2)            # 2 candidates tonight: --max-trials 2
    need = max(gate["margin"], z * math.sqrt(2) * gate["noise_sd"])
    assert "noise bar: delta >= " in out.stdout

    study = optuna.load_study(study_name="council-proxy-demo", storage=f"sqlite:///{wd / 'autoresearch.db'}")
    scored = [t for t in study.trials if t.user_attrs.get("score") is not None]
    assert len(scored) == 2
    for t in scored:
        noise = t.user_attrs["stats"]["noise"]
        assert noise["looks"] == 2 and noise["alpha"] == gate["alpha"] and noise["sd"] == gate["noise_sd"]
        assert noise["required_delta"] == pytest.approx(need)
        assert noise["source"] == gate["noise_source"]
        assert any(r.startswith(f"noise bar: delta >= {need:.3f}") for r in t.user_attrs["reasons"])
        delta = t.user_attrs["stats"]["delta"]
        assert noise["required_p"] == gate.get("require_p")
        p_ok = gate.get("require_p") is None or t.user_attrs["p_better"] >= gate["require_p"] - 1e-9
        floor = gate.get("category_p_floor")
        cats_ok = floor is None or all(c["p_adjusted"] >= floor - 1e-9
                                       for c in t.user_attrs["stats"]["per_category"].values())
        assert (t.user_attrs["result"] == "kept") == (delta >= need - 1e-9 and p_ok and cats_ok)
        ev = json.loads((wd / "adapters-experimental" / t.user_attrs["experiment_id"] / "eval_results.json").read_text())
        assert ev["comparison"]["noise"] == noise

    vault = sorted((wd / "demo-vault" / "events").rglob("autoresearch-*.md"))
    assert len(vault) == 2
    for entry in vault:
        assert f"Noise bar: delta had to reach +{need:.3f}" in entry.read_text()

    [report] = (wd / "reports").glob("*.md")
    text = report.read_text()
    assert "## Noise" in text and f"at least **+{need:.3f}**" in text and "2 candidate(s)" in text
