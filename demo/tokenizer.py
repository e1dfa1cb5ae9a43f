"""A byte-level BPE tokenizer trained locally (no download), saved the way mlx-lm loads it.

Byte-level BPE so that any text round-trips (mlx-lm then picks its BPE streaming
detokenizer from the ByteLevel decoder). The chat template is Qwen's plain format, and
`<|im_end|>` is the eos token, so generation stops at the end of an assistant turn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from common.atomic import atomic_write_json, atomic_write_text
from common.policy import TOOL_CLOSE, TOOL_OPEN

from .text import EOT, IM_END, IM_START, SPECIAL_TOKENS

VOCAB_SIZE = 1024

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    markers = [AddedToken(TOOL_OPEN, special=False, normalized=False),
               AddedToken(TOOL_CLOSE, special=False, normalized=False)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(markers),  # the markers fill the last ids
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # Tool-call markers as single (non-special) tokens: a tiny model copies one token
    # far more reliably than five, and decoding keeps them in the text.
    tok.add_tokens(markers)
    return tok


def tokenizer_config() -> dict:
    # PreTrainedTokenizerFast loads offline from tokenizer.json under transformers 4
    # and 5 alike (5 maps it to TokenizersBackend).
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": EOT,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_prefix_space": False,
        "split_special_tokens": False,
    }


def save_tokenizer(tok: Tokenizer, model_dir: Path) -> None:
    atomic_write_text(model_dir / "tokenizer.json", tok.to_str(pretty=False))
    atomic_write_json(model_dir / "tokenizer_config.json", tokenizer_config())
    # transformers 5 keeps the template in its own file; writing both serves 4 and 5.
    atomic_write_text(model_dir / "chat_template.jinja", CHAT_TEMPLATE)
    atomic_write_json(model_dir / "special_tokens_map.json", {
        "eos_token": IM_END, "pad_token": EOT,
        "additional_special_tokens": [IM_START, IM_END]})


def special_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
