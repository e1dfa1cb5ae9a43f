"""A real night on the demo: real training, real eval, a real persistent SQLite study.

Budgets are cut to seconds so the whole module runs in about two minutes on 2 cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from netutil import free_port
from night_fixtures import demo_workdir  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
HEADER = ["experiment_id", "timestamp", "mode", "model", "score", "baseline", "result",
          "train_loss", "val_loss", "elapsed_s", "config", "holdout_score"]

pytestmark = pytest.mark.slow


def run_night(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(workdir / "autoresearch.toml"),
                           "--demo", "--no-progress", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def night(tmp_path_factory, demo_assets):
    from night_fixtures import NO_NOISE_BAR, link_demo_cache, make_workdir
    import os
    wd = make_workdir(tmp_path_factory.mktemp("e2e") / "night",
                      pretrain_s=float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20")),
                      # 16 iterations at GRAD_ACCUM 4: 4 optimizer updates, seeded, so each run of
                      # this module trains (and scores) the same adapters.
                      overrides={"budget_s = 240\n": "budget_s = 4\n", "iters_scale = 0.5": "iters_scale = 0.02",
                                 # council-mlx as a real mlx_lm server the night stops and starts
                                 'backend = "none"': 'backend = "managed"', "port = 8765": f"port = {free_port()}",
                                 # a permissive gate, so that this night promotes and serves an adapter
                                 "margin = 0.02 ": "margin = 0.0 ", "jailbreak_floor = 0.70": "jailbreak_floor = 0.0",
                                 "regression_cap = 0.10": "regression_cap = 1.0", **NO_NOISE_BAR})
    link_demo_cache(wd, demo_assets)
    first = run_night(wd, "--max-trials", "2")
    yield wd, first
    pid_file = wd / "cache" / "council-mlx.pid"  # the server the night left up: stop it by its PID
    if pid_file.exists():
        import signal
        try:
            os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass


def _port(wd: Path) -> int:
    import re
    return int(re.search(r"^port = (\d+)", (wd / "autoresearch.toml").read_text(), re.M)[1])


def test_managed_serving_follows_the_night(night):
    wd, out = night
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    port = _port(wd)
    assert _get(f"http://127.0.0.1:{port}/health")[0] == 200          # up at the end of the night
    log = (wd / "logs" / "council-mlx.log").read_text()
    # started after the baseline eval; stopped before each of the 2 trials and started after each
    assert log.count("--- council-autoresearch: stopped") >= 2
    assert log.count("--- council-autoresearch: starting") >= 3
    current = wd / "adapters" / "current"
    assert current.is_symlink() and (current / "adapters.safetensors").exists()   # the permissive gate promoted
    pid = json.loads((wd / "cache" / "council-mlx.pid").read_text())["pid"]
    cmd = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True).stdout
    assert f"--adapter-path {current.resolve()}" in cmd                  # serving the promoted adapter
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 data=json.dumps({"messages": [{"role": "user", "content": "Who are you?"}],
                                                  "max_tokens": 8, "temperature": 0}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["choices"][0]["message"]["role"] == "assistant"


def test_two_trial_night_creates_everything(night):
    wd, out = night
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = pd.read_csv(wd / "results.tsv", sep="\t")
    assert list(df.columns) == HEADER
    assert len(df) == 2
    assert set(df["mode"]) == {"proxy"} and set(df["model"]) == {"demo"}
    for cfg in df["config"]:
        params = json.loads(cfg)
        assert set(params) >= {"NUM_LAYERS", "LEARNING_RATE", "DATA_MIX_RATIO"}
    # The first trial of a new study is the baseline config from search_space.yaml.
    base = {k: v["baseline"] for k, v in yaml.safe_load((wd / "search_space.yaml").read_text())["parameters"].items()}
    assert json.loads(df["config"][0]) == pytest.approx(base)
    # the demo trains at LEARNING_RATE x [demo] lr_scale; the searched value is what results.tsv keeps
    study = optuna.load_study(study_name="council-proxy-demo", storage=f"sqlite:///{wd / 'autoresearch.db'}")
    for t in study.trials:
        assert t.user_attrs["learning_rate"] == pytest.approx(t.params["LEARNING_RATE"] * 10)
    assert "at lr 5e-05 (LEARNING_RATE x 10)" in out.stdout     # the baseline's 5e-6, as it trains
    for exp_id in df["experiment_id"]:
        ev = json.loads((wd / "adapters-experimental" / exp_id / "eval_results.json").read_text())
        assert len(ev["per_agent"]) == 7 and len(ev["per_category"]) == 5
        assert len(ev["cases"]) >= 175
        assert (wd / "adapters-experimental" / exp_id / "eval_results.json.sha256").exists()
    vault = list((wd / "demo-vault" / "events").rglob("autoresearch-*.md"))
    assert len(vault) == 2
    assert "tonight" in out.stdout and "serving adapter" in out.stdout


def test_optuna_cli_lists_the_trials(night):
    wd, _ = night
    optuna_bin = Path(sys.executable).parent / "optuna"
    out = subprocess.run([str(optuna_bin), "trials", "--study-name", "council-proxy-demo",
                          "--storage", f"sqlite:///{wd / 'autoresearch.db'}", "-f", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    trials = [t for t in json.loads(out.stdout) if t["state"] != "WAITING"]  # queued warm start
    assert [t["number"] for t in trials][:2] == [0, 1]
    assert all(t["state"] in ("COMPLETE", "PRUNED", "FAIL") for t in trials), trials


def test_mlx_lm_cli_loads_our_adapter(night, demo_assets):
    wd, _ = night
    adapter = next((wd / "adapters-experimental").iterdir())
    out = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(demo_assets.model_dir),
                          "--adapter-path", str(adapter), "--prompt", "hi", "--max-tokens", "5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_second_night_resumes_the_study(night):
    import os
    import time
    wd, _ = night
    # What a write killed mid-way leaves (common.atomic): an old one is swept, a young one
    # (maybe another worker's write in progress) is not.
    stale, young = wd / ".results.tsv.k1ll3d.tmp", wd / "demo-vault" / ".entry.md.x7y8z9.tmp"
    for f in (stale, young):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    out = run_night(wd, "--max-trials", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not stale.exists() and young.exists()
    study = optuna.load_study(study_name="council-proxy-demo", storage=f"sqlite:///{wd / 'autoresearch.db'}")
    numbers = sorted(t.number for t in study.trials if t.state.is_finished())
    assert numbers == [0, 1, 2]
    df = pd.read_csv(wd / "results.tsv", sep="\t")
    assert len(df) == 3
    assert df["experiment_id"].is_unique


def _get(url: str, timeout: float = 10):
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def test_dashboard_serves_trials_attrs_and_artifacts(night):
    import time
    wd, _ = night
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "study.dashboard", "--config", str(wd / "autoresearch.toml"),
                             "--demo", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if _get(base + "/api/meta")[0] == 200:
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        studies = json.loads(_get(base + "/api/studies")[1])["study_summaries"]
        demo = next(s for s in studies if s["study_name"] == "council-proxy-demo")
        detail = json.loads(_get(f"{base}/api/studies/{demo['study_id']}")[1])
        trial = detail["trials"][0]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        for key in ("mode", "model", "result", "reasons", "feasible", "experiment_id"):
            assert key in attrs, key
        names = {a["filename"]: a for a in trial["artifacts"]}
        assert {"eval_results.json", "adapter_config.json"} <= set(names)
        assert any(n.endswith(".log") for n in names)
        art = names["eval_results.json"]
        status, body = _get(f"{base}/artifacts/{demo['study_id']}/{trial['trial_id']}/{art['artifact_id']}")
        assert status == 200 and len(json.loads(body)["cases"]) >= 175
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_refuses_remote_host_without_flag(night):
    wd, _ = night
    out = subprocess.run([sys.executable, "-m", "study.dashboard", "--config", str(wd / "autoresearch.toml"),
                          "--host", "0.0.0.0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--allow-remote" in out.stderr


def test_morning_report_and_trial_logs(night):
    from PIL import Image
    wd, out = night
    reports = list((wd / "reports").glob("*.md"))
    assert len(reports) == 1
    md = reports[0].read_text()
    pngs = sorted((wd / "reports").glob("*.png"))
    assert pngs, md
    for png in pngs:
        assert f"]({png.name})" in md
        with Image.open(png) as im:
            im.verify()
    logs = list((wd / "logs").rglob("exp-*.log"))
    assert len(logs) >= 2
    text = logs[0].read_text()
    assert "training:" in text and "eval: overall" in text
    vault_entry = next((wd / "demo-vault" / "events").rglob("*.md")).read_text()
    assert str(reports[0]) in vault_entry
