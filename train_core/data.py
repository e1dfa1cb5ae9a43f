"""Training data: mlx-lm chat jsonl -> tokenized, truncated datasets and fixed batches."""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
from mlx_lm.tuner.trainer import iterate_batches

from common.atomic import atomic_write_bytes, sha256_file
from common.errors import ConfigError

log = logging.getLogger("train_core")

# ChatDataset reads "tools" too (tool-calling examples render them into the prompt).
KEPT_KEYS = ("messages", "tools")
# Tokenised splits, beside the split files: a night's trials share a data variant, so each
# split is tokenised once per variant and tokenizer, not once per trial.
TOKEN_CACHE = ".tokens"
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "chat_template*", "vocab*", "merges.txt",
                   "*.tiktoken", "added_tokens.json")


def read_chat_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of {"messages": [...]} (extra keys dropped); bad rows raise ConfigError."""
    if not path.is_file():
        raise ConfigError(str(path), None, "file not found (need train.jsonl and valid.jsonl)")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            rows.append(_chat_row(line, str(path), n))
    if not rows:
        raise ConfigError(str(path), None, "no examples")
    return rows


def _chat_row(line: str, source: str, n: int) -> dict[str, Any]:
    where = f"line {n}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, where, f"invalid JSON: {exc.msg}") from None
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise ConfigError(source, where, 'expected {"messages": [ ... ]} with at least one message')
    for m in row["messages"]:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ConfigError(source, where, f"message without role/content: {str(m)[:80]}")
    return {k: row[k] for k in KEPT_KEYS if k in row}


class TokenizedDataset(CacheDataset):
    """Examples tokenized once, truncated to max_seq_length, with their prompt offsets.

    Truncating here (not in mlx-lm's batcher) keeps mlx-lm from printing a warning on
    every batch, and lets us drop examples whose answer lies entirely past the cut:
    with mask_prompt they have no loss tokens, and a batch of them divides 0 by 0 (NaN).
    `itemlen` returns the token length (CacheDataset's counts dict keys), so mlx-lm's
    length-sorted batching groups similar lengths and pads less.
    """

    def __init__(self, items: list[tuple[list[int], int]], max_seq_length: int):
        kept = [(list(t)[:max_seq_length], off) for t, off in items if has_loss_tokens(len(t), off, max_seq_length)]
        self.dropped = len(items) - len(kept)
        self.truncated = sum(1 for t, off in items if len(t) > max_seq_length)
        self._data = kept
        self._proc_data = kept

    def itemlen(self, idx: int) -> int:
        return len(self._proc_data[idx][0])

    def __getitem__(self, idx: int):
        return self._proc_data[idx]


def has_loss_tokens(n_tokens: int, offset: int, max_seq_length: int) -> bool:
    """True when at least one answer token survives truncation to max_seq_length."""
    return offset < min(n_tokens, max_seq_length)


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the model folder's tokenizer and chat-template files (not the weights)."""
    h = hashlib.sha256()
    root = Path(model_dir)
    files = sorted({f for pattern in TOKENIZER_FILES for f in root.glob(pattern) if f.is_file()})
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def _tokenize(path: Path, tokenizer, mask_prompt: bool) -> list[tuple[list[int], int]]:
    chat = ChatDataset(read_chat_jsonl(path), tokenizer, mask_prompt=mask_prompt)
    return [(list(t), int(off)) for t, off in (chat.process(chat[i]) for i in range(len(chat)))]


def _cache_path(path: Path, tokenizer_id: str, mask_prompt: bool) -> Path:
    key = hashlib.sha256(f"{sha256_file(path)}:{tokenizer_id}:{int(mask_prompt)}".encode()).hexdigest()[:20]
    return path.parent / TOKEN_CACHE / f"{path.stem}-{key}.npz"


def _read_cache(cache: Path) -> list[tuple[list[int], int]] | None:
    try:
        with np.load(cache) as z:
            tokens, lengths, offsets = z["tokens"], z["lengths"], z["offsets"]
    except (OSError, KeyError, ValueError):
        return None   # missing or damaged: tokenise again
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    if bounds[-1] != len(tokens):
        return None
    return [(tokens[a:b].tolist(), int(off)) for a, b, off in zip(bounds[:-1], bounds[1:], offsets)]


def _write_cache(cache: Path, items: list[tuple[list[int], int]]) -> None:
    buf = io.BytesIO()
    np.savez(buf, tokens=np.fromiter(itertools.chain.from_iterable(t for t, _ in items), dtype=np.int64),
             lengths=np.array([len(t) for t, _ in items], dtype=np.int64),
             offsets=np.array([off for _, off in items], dtype=np.int64))
    try:
        atomic_write_bytes(cache, buf.getvalue())
    except OSError as exc:   # a read-only data folder: train without the cache
        log.warning("token cache not written (%s): %s", cache, exc)


def load_split(data_dir: Path, name: str, tokenizer, *, mask_prompt: bool, max_seq_length: int,
               tokenizer_id: str = "") -> TokenizedDataset:
    """The split, tokenised, truncated to max_seq_length. With tokenizer_id (from
    tokenizer_fingerprint), the token ids are cached beside the split, keyed by the split
    file's sha256, the tokenizer and mask_prompt: a later trial on the same variant reads
    them instead of tokenising again (the cache holds them before truncation)."""
    path = data_dir / f"{name}.jsonl"
    cache = _cache_path(path, tokenizer_id, mask_prompt) if tokenizer_id and path.is_file() else None
    items = _read_cache(cache) if cache is not None and cache.is_file() else None
    if items is None:
        items = _tokenize(path, tokenizer, mask_prompt)
        if cache is not None:
            _write_cache(cache, items)
    ds = TokenizedDataset(items, max_seq_length)
    if len(ds) == 0:
        raise ConfigError(str(path), None, f"every example's answer lies past max_seq_length={max_seq_length}")
    if ds.truncated:
        log.warning("%s: %d of %d examples cut to max_seq_length=%d, %d dropped (answer past the cut)",
                    path, ds.truncated, len(items), max_seq_length, ds.dropped)
    return ds


def fixed_batches(dataset, batch_size: int, max_seq_length: int, *, limit: int | None, seed: int) -> list:
    """The same batches on every call (a seeded draw), so losses at different steps compare.

    mlx-lm's batcher seeds NumPy's global generator; the training order also draws
    from it, so the global state is restored afterwards.
    """
    state = np.random.get_state()
    try:
        gen = iterate_batches(dataset, min(batch_size, len(dataset)), max_seq_length, loop=False, seed=seed)
        return [b for _, b in zip(range(limit) if limit else itertools.count(), gen)]
    finally:
        np.random.set_state(state)



def padded_tokens(batches: list) -> int:
    """Batch x padded length, summed: what a forward pass over these batches costs."""
    return sum(int(b[0].shape[0]) * int(b[0].shape[1]) for b in batches)
