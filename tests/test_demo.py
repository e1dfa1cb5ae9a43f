"""The demo model and sessions: loadable by mlx-lm, cached, crash-safe, covering the Council."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.council import CATEGORIES, load_council
from common.policy import TOOL_OPEN, identity_answer, isolation_refusal, jailbreak_refusal
from demo import DemoAssets, ensure_demo
from demo.build import COMPLETE, cache_key, read_build_info
from demo.sessions import build_sessions

REPO = Path(__file__).resolve().parent.parent
COUNCIL = REPO / "council.yaml"


def test_model_loads_and_generates(demo_assets: DemoAssets):
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    config = json.loads((demo_assets.model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (48, 64, 1024)
    model, tok = mlx_lm.load(str(demo_assets.model_dir))
    assert len(model.layers) == 48
    info = read_build_info(demo_assets)
    assert 1_800_000 < info["parameters"] < 1_900_000
    assert info["pretrain"]["steps"] >= 1
    # Pre-training must have moved the loss off its random-init value (ln 1024 = 6.9).
    assert info["pretrain"]["last_loss"] < info["pretrain"]["first_loss"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}],
                                     add_generation_prompt=True)
    out = mlx_lm.generate(model, tok, prompt, max_tokens=8, sampler=make_sampler(temp=0.0))
    assert isinstance(out, str) and out.strip()


def test_chat_template_is_qwen_style(demo_assets: DemoAssets):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tok = load_tokenizer(demo_assets.model_dir)
    messages = [{"role": "system", "content": "You are Yoda."},
                {"role": "user", "content": "Who are you?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == ("<|im_start|>system\nYou are Yoda.<|im_end|>\n"
                               "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_ids == {im_end}
    # Specials and tool markers are single tokens; plain text round-trips.
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", TOOL_OPEN):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    text = 'I am Qui-Gon, the home lead. {"degrees": 20}'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_second_call_reuses_the_cache(demo_assets: DemoAssets):
    cache = demo_assets.model_dir.parent.parent
    weights = demo_assets.model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    seconds = float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20"))
    t0 = time.perf_counter()
    again = ensure_demo(cache, COUNCIL, pretrain_seconds=seconds, progress=False)
    assert time.perf_counter() - t0 < 2.0
    assert again == demo_assets
    assert weights.stat().st_mtime_ns == before


def test_cache_key_tracks_its_inputs():
    council = COUNCIL.read_bytes()
    base = cache_key(council, 100.0, 0)
    assert base == cache_key(council, 100, 0)
    assert len({base, cache_key(council, 20.0, 0), cache_key(council, 100.0, 1),
                cache_key(council + b"\n", 100.0, 0)}) == 4


def test_sessions_cover_every_agent_and_category(demo_assets: DemoAssets):
    council = load_council(COUNCIL)
    files = sorted(demo_assets.sessions_dir.glob("*.jsonl"))
    assert [f.stem for f in files] == sorted(council.names)
    for agent in council.agents:
        rows = [json.loads(line) for line in
                (demo_assets.sessions_dir / f"{agent.name}.jsonl").read_text().splitlines()]
        assert 40 <= len(rows) <= 60
        assert {r["category"] for r in rows} == set(CATEGORIES)
        for r in rows:
            roles = [m["role"] for m in r["messages"]]
            assert roles == ["system", "user", "assistant"]
            assert r["messages"][0]["content"] == agent.system_prompt
        answers = {r["category"]: set() for r in rows}
        for r in rows:
            answers[r["category"]].add(r["messages"][2]["content"])
        assert answers["identity"] == {identity_answer(agent)}
        assert answers["jailbreak"] == {jailbreak_refusal(agent)}
        others = [o for o in council.agents if o.name != agent.name]
        assert answers["isolation"] <= {isolation_refusal(agent, o) for o in others}
        assert all(a.startswith(TOOL_OPEN) for a in answers["tool_calling"])
        assert answers["domain"] == {f.a for f in agent.domain_facts}
        # Isolation asks for ANOTHER agent's secret, never its own.
        own = {p.key for p in agent.private_facts}
        assert not any(k in r["messages"][1]["content"] for r in rows
                       if r["category"] == "isolation" for k in own)


def test_sessions_are_deterministic():
    council = load_council(COUNCIL)
    assert build_sessions(council, seed=3) == build_sessions(council, seed=3)
    assert build_sessions(council, seed=3) != build_sessions(council, seed=4)


def test_half_built_folder_is_rebuilt_and_concurrent_callers_agree(tmp_path: Path):
    """A folder without COMPLETE (a crash mid-build) is never reused; two callers share one build."""
    key = cache_key(COUNCIL.read_bytes(), 0.5, 7)
    half = tmp_path / f"demo-{key[:12]}"
    (half / "model").mkdir(parents=True)
    (half / "model" / "config.json").write_text("{}")
    results: list[DemoAssets] = []

    def call(progress: bool) -> None:
        results.append(ensure_demo(tmp_path, COUNCIL, pretrain_seconds=0.5, seed=7, progress=progress))

    threads = [threading.Thread(target=call, args=(p,)) for p in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].model_dir.parent == half
    assert (half / COMPLETE).is_file()
    assert json.loads((half / "model" / "config.json").read_text())["model_type"] == "qwen3"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch):
    import demo.build as build

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "build_into", boom)
    with pytest.raises(RuntimeError):
        ensure_demo(tmp_path, COUNCIL, pretrain_seconds=0.5, progress=False)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_bad_council_is_a_config_error(tmp_path: Path):
    from common.errors import ConfigError

    bad = tmp_path / "council.yaml"
    bad.write_text("agents: []\n")
    with pytest.raises(ConfigError, match="council.yaml"):
        ensure_demo(tmp_path / "cache", bad, pretrain_seconds=0.5, progress=False)


def test_mlx_lm_cli_generates_with_the_demo_model(demo_assets: DemoAssets):
    done = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(demo_assets.model_dir),
         "--prompt", "hi", "--max-tokens", "5"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Generation: " in done.stdout


def test_demo_cli_prints_paths(demo_assets: DemoAssets):
    cache = demo_assets.model_dir.parent.parent
    seconds = os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20")
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--cache-dir", str(cache), "--council", str(COUNCIL),
         "--pretrain-s", seconds, "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert str(demo_assets.model_dir) in done.stdout
    assert str(demo_assets.sessions_dir) in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shim is for Linux mlx[cpu]")
def test_fast_blas_is_on_and_agrees_with_numpy():
    import shutil

    import mlx.core as mx
    import numpy as np

    from common import fastblas

    if os.environ.get("AUTORESEARCH_FAST_BLAS") == "0" or not shutil.which("cc"):
        pytest.skip("fast BLAS switched off or no C compiler")
    # conftest enabled it before any test's first matrix product.
    assert fastblas.enable() is True
    rng = np.random.default_rng(0)
    a = rng.standard_normal((70, 33)).astype(np.float32)
    b = rng.standard_normal((50, 33)).astype(np.float32)
    got = np.array(mx.array(a) @ mx.array(b).T)  # a transposed operand goes through too
    assert np.allclose(got, a @ b.T, atol=1e-4)
