"""A llama GGUF file as an mlx-lm model folder, with no download and no llama.cpp.

`mlx.core.load(gguf, return_metadata=True)` already reads the 4-bit tensors into MLX's
own quantized layout (group size 32: uint32 `weight`, `scales`, `biases`) and returns
the hyper-parameters, the tokenizer's vocabulary and merges and the chat template as
metadata. What is left is naming: the tensors get mlx-lm's llama names, the metadata
becomes config.json, tokenizer.json and tokenizer_config.json.

GGUF stores q_proj/k_proj permuted for the interleaved rotary layout, hence
`rope_traditional: true`. On a CPU the 4-bit kernels are slow (one LoRA step 70 s 4-bit
against 4.2 s float32 on OpenBLAS here), so `dtype="float32"` dequantizes; on Metal the
4-bit model is the fast one and is kept as it is.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json, atomic_write_text
from common.errors import ConfigError

GROUP_SIZE, BITS = 32, 4

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_NAME = re.compile(r"^(?:blk\.(\d+)\.)?([a-z_]+)\.(weight|scales|biases)$")


def mlx_name(gguf_name: str) -> str:
    """`blk.3.attn_q.scales` -> `model.layers.3.self_attn.q_proj.scales`; ValueError if unknown."""
    m = _NAME.match(gguf_name)
    table = _BLOCK_NAMES if m and m[1] is not None else _TOP_NAMES
    if not m or m[2] not in table:
        raise ValueError(f"no mlx-lm llama name for GGUF tensor {gguf_name!r}")
    base = f"model.layers.{m[1]}.{table[m[2]]}" if m[1] is not None else table[m[2]]
    return f"{base}.{m[3]}"


def _scalar(meta: dict, key: str, source: str) -> Any:
    if key not in meta:
        raise ConfigError(source, key, "missing from the GGUF metadata")
    v = meta[key]
    return v.item() if hasattr(v, "item") else v


def llama_config(meta: dict, source: str, quantized: dict | None) -> dict:
    arch = _scalar(meta, "general.architecture", source)
    if arch != "llama":
        raise ConfigError(source, "general.architecture", f"only llama GGUF files convert, got {arch!r}")
    p = "llama."
    hidden = int(_scalar(meta, p + "embedding_length", source))
    heads = int(_scalar(meta, p + "attention.head_count", source))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_scalar(meta, p + "block_count", source)),
        "intermediate_size": int(_scalar(meta, p + "feed_forward_length", source)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(meta, p + "attention.head_count_kv", source)),
        "head_dim": hidden // heads,
        "rms_norm_eps": float(_scalar(meta, p + "attention.layer_norm_rms_epsilon", source)),
        "rope_theta": float(_scalar(meta, p + "rope.freq_base", source)),
        "rope_traditional": True,
        "max_position_embeddings": int(_scalar(meta, p + "context_length", source)),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": True,   # set to False below when the file has its own output
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(_scalar(meta, "tokenizer.ggml.bos_token_id", source)),
        "eos_token_id": int(_scalar(meta, "tokenizer.ggml.eos_token_id", source)),
        "torch_dtype": "float32",
    }
    if quantized:
        config["quantization"] = quantized
        config["torch_dtype"] = "float16"
    return config


def tensor_bits(weights: dict, stem: str) -> int:
    """Bits per value of a quantized tensor: Q4_1 files keep token_embd at 8 bits."""
    packed, groups = weights[stem + ".weight"].shape[-1], weights[stem + ".scales"].shape[-1]
    return packed * 32 // (groups * GROUP_SIZE)


def quantization(weights: dict) -> dict:
    """mlx-lm's `quantization` entry: the common bits, plus each module that differs."""
    stems = {n[: -len(".scales")] for n in weights if n.endswith(".scales")}
    q: dict = {"group_size": GROUP_SIZE, "bits": BITS}
    for stem in sorted(stems):
        bits = tensor_bits(weights, stem)
        if bits != BITS:
            q[mlx_name(stem + ".weight")[: -len(".weight")]] = {"group_size": GROUP_SIZE, "bits": bits}
    return q


def convert_weights(weights: dict, dtype: str) -> dict:
    """Renamed tensors; "float32" dequantizes every 4-bit matrix, "4bit" keeps them."""
    import mlx.core as mx

    out: dict = {}
    for name, w in weights.items():
        target = mlx_name(name)
        if dtype == "4bit":
            out[target] = w
            continue
        if target.endswith((".scales", ".biases")):
            continue   # folded into the dequantized weight
        if w.dtype == mx.uint32:
            stem = name[: -len(".weight")]
            w = mx.dequantize(w, weights[stem + ".scales"], weights[stem + ".biases"],
                              group_size=GROUP_SIZE, bits=tensor_bits(weights, stem))
        out[target] = w.astype(mx.float32)
    return out


def tokenizer_json(meta: dict, source: str) -> str:
    """A `tokenizers` byte-level BPE (GPT-2 style, digits split one by one as SmolLM's
    pre-tokenizer does) from the GGUF vocabulary and merges; control tokens are special."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if _scalar(meta, "tokenizer.ggml.model", source) != "gpt2":
        raise ConfigError(source, "tokenizer.ggml.model", "only byte-level BPE (gpt2) tokenizers convert")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    types = [int(t) for t in meta["tokenizer.ggml.token_type"].tolist()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, kind in zip(tokens, types) if kind == 3]   # GGUF token type 3: control
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok.to_str(pretty=False)


def special_tokens(meta: dict, source: str) -> dict[str, str]:
    tokens = meta["tokenizer.ggml.tokens"]
    ids = {k: int(_scalar(meta, f"tokenizer.ggml.{k}_token_id", source)) for k in ("bos", "eos")}
    pad_key = "tokenizer.ggml.padding_token_id"
    ids["pad"] = int(_scalar(meta, pad_key, source)) if pad_key in meta else ids["eos"]
    return {k: tokens[i] for k, i in ids.items()}


def tokenizer_config(meta: dict, source: str) -> dict:
    sp = special_tokens(meta, source)
    types = meta["tokenizer.ggml.token_type"].tolist()
    control = [t for t, kind in zip(meta["tokenizer.ggml.tokens"], types) if kind == 3]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": sp["bos"], "eos_token": sp["eos"], "pad_token": sp["pad"], "unk_token": None,
        "additional_special_tokens": control,
        "chat_template": _scalar(meta, "tokenizer.chat_template", source),
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "split_special_tokens": False,
    }


def convert(gguf: Path, model_dir: Path, dtype: str) -> dict:
    """Write model.safetensors, config.json and the tokenizer files into `model_dir`;
    returns config.json's content. The caller renames the folder into place when done."""
    import mlx.core as mx

    if dtype not in ("float32", "4bit"):
        raise ConfigError(None, "dtype", f"must be float32 or 4bit, got {dtype!r}")
    source = str(gguf)
    try:
        weights, meta = mx.load(source, return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(source, None, f"not a readable GGUF file: {exc}") from None
    try:
        config = llama_config(meta, source, quantization(weights) if dtype == "4bit" else None)
        out = convert_weights(weights, dtype)
    except ValueError as exc:
        raise ConfigError(source, None, str(exc)) from None
    config["tie_word_embeddings"] = "lm_head.weight" not in out
    model_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(model_dir / "model.safetensors"), out, metadata={"format": "mlx"})
    atomic_write_json(model_dir / "config.json", config)
    atomic_write_text(model_dir / "tokenizer.json", tokenizer_json(meta, source))
    tcfg = tokenizer_config(meta, source)
    atomic_write_json(model_dir / "tokenizer_config.json", tcfg)
    # transformers 5 reads the template from its own file; writing both serves 4 and 5.
    atomic_write_text(model_dir / "chat_template.jinja", tcfg["chat_template"])
    sp = special_tokens(meta, source)
    atomic_write_json(model_dir / "special_tokens_map.json", {
        "bos_token": sp["bos"], "eos_token": sp["eos"], "pad_token": sp["pad"],
        "additional_special_tokens": tcfg["additional_special_tokens"]})
    return config
