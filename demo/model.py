"""The demo's qwen3 model: deep and narrow, so NUM_LAYERS (16-48) means something.

48 blocks of width 64 (1.84 M parameters, 7.4 MB in float32): small enough to pre-train
in a couple of minutes on a CPU, deep enough that putting LoRA on 16 or on 48 blocks is
a real difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models import qwen3

from common.atomic import atomic_write_json


@dataclass(frozen=True)
class ModelShape:
    num_hidden_layers: int = 48
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    vocab_size: int = 1024
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True


def config_dict(shape: ModelShape, eos_id: int, pad_id: int) -> dict:
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        **asdict(shape),
        "hidden_act": "silu",
        "attention_bias": False,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }


def create_model(config: dict, seed: int) -> qwen3.Model:
    mx.random.seed(seed)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model


def parameter_count(model: qwen3.Model) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def save_model(model: qwen3.Model, config: dict, model_dir: Path) -> None:
    """config.json + model.safetensors: the layout `mlx_lm.load` reads."""
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    # mx.save_safetensors writes in place; the whole folder is renamed into the cache
    # only when complete, so a partial file here is never seen as a model.
    mx.save_safetensors(str(model_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    atomic_write_json(model_dir / "config.json", config)
