"""A holdout case that leaked into the sessions stops the night before any training (exit 2, ids printed)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.council import load_council
from evaluation.suite import load_suite
from night_fixtures import make_workdir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_contaminated_holdout_stops_the_night(tmp_path, demo_assets):
    council = load_council(ROOT / "council.yaml")
    case = next(c for c in load_suite(ROOT / "evaluation" / "suite", council) if c.split == "holdout")
    sessions = tmp_path / "sessions"
    shutil.copytree(demo_assets.sessions_dir, sessions)
    agent = council.agent(case.agent)
    with open(sessions / f"{case.agent}.jsonl", "a") as fh:   # the leak: an eval prompt in the training data
        fh.write(json.dumps({"messages": [{"role": "system", "content": agent.system_prompt},
                                          {"role": "user", "content": case.prompt},
                                          {"role": "assistant", "content": "I will not say."}],
                             "category": case.category}) + "\n")
    wd = make_workdir(tmp_path / "night", overrides={
        'model = "~/models/Qwen3.5-9B-4bit"': f'model = "{demo_assets.model_dir}"',
        'sessions = "sessions"': f'sessions = "{sessions}"'})
    out = subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(wd / "autoresearch.toml"),
                          "--mode", "proxy", "--max-trials", "1", "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert case.id in out.stderr and "holdout contaminated" in out.stderr
    assert not (wd / "adapters-experimental").exists()       # nothing trained
