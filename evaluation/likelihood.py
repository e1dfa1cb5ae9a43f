"""Log-likelihood of candidate replies: the `choice` scorer's input.

Each choice is rendered as the assistant's reply by the chat template (as mlx-lm's
mask_prompt training renders it) and scored by the summed log-prob of its tokens (the
log-probability of the whole reply), the prompt masked. The prompt is shared by every
choice of a case, so it is run once per case and its KV cache is copied to the choices
(`shared_prefix_logprobs`, about half the tokens of running every full sequence);
`full_logprobs` is the plain version, kept as the fallback for caches that cannot be
merged and as the reference in tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import mlx.core as mx

# Largest logits tensor (sequences × length × vocab, float32) one forward may build;
# batches shrink for big vocabularies instead of running out of memory.
LOGIT_BUDGET = 1 << 27


def _ids(out: Any) -> list[int]:
    if hasattr(out, "keys"):  # some tokenizers return a BatchEncoding
        out = out["input_ids"]
    return [int(t) for t in out]


# Reasoning off: with a 32-token budget a thinking model (Qwen3) would spend it all in
# <think>; and Qwen3 renders a finished assistant turn with an empty think block, which is
# what enable_thinking=False puts in the prompt, so prompt and training rendering agree.
# Templates without the switch ignore it.
CHAT_KWARGS = {"enable_thinking": False}


def prompt_ids(tokenizer: Any, msgs: list[dict[str, str]]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return _ids(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, **CHAT_KWARGS))
    return _ids(tokenizer.encode("\n\n".join(m["content"] for m in msgs) + "\n\n"))


def reply_ids(tokenizer: Any, msgs: list[dict[str, str]], reply: str, prompt: list[int]) -> tuple[list[int], int]:
    """(ids, start): the conversation with `reply` as the assistant turn; `start` is where
    the prompt ends (the longest common prefix, as templates may re-render the last turn)."""
    if getattr(tokenizer, "chat_template", None):
        full = _ids(tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": reply}], **CHAT_KWARGS))
    else:
        full = prompt + _ids(tokenizer.encode(reply, add_special_tokens=False)) + list(tokenizer.eos_token_ids)[:1]
    start = 0
    while start < min(len(prompt), len(full)) and prompt[start] == full[start]:
        start += 1
    if start >= len(full):
        raise ValueError(f"reply {reply!r} rendered to no tokens")
    return full, max(start, 1)


@dataclass
class ChoiceSet:
    """One case's choices: a prefix every choice shares, then each choice's own tail;
    tail tokens from `starts[j]` on are scored."""
    key: Any
    prefix: list[int]
    tails: list[list[int]]
    starts: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.prefix) + sum(len(t) for t in self.tails)


def make_choice_set(key: Any, tokenizer: Any, msgs: list[dict[str, str]], replies: Sequence[str]) -> ChoiceSet:
    prompt = prompt_ids(tokenizer, msgs)
    rendered = [reply_ids(tokenizer, msgs, r, prompt) for r in replies]
    cut = min(start for _, start in rendered)  # every choice agrees with the prompt up to here
    return ChoiceSet(key, rendered[0][0][:cut], [ids[cut:] for ids, _ in rendered],
                     [start - cut for _, start in rendered])


def vocab_size(model: Any) -> int:
    return int(getattr(getattr(model, "args", None), "vocab_size", 0) or 152064)


def batches(sets: list[ChoiceSet], max_seqs: int, vocab: int) -> Iterator[list[ChoiceSet]]:
    """Consecutive groups of cases with at most `max_seqs` choices (at least one case) and
    logits under LOGIT_BUDGET; sorted by tail length so little is padded."""
    group: list[ChoiceSet] = []
    for s in sorted(sets, key=lambda s: max(len(t) for t in s.tails)):
        n = sum(len(g.tails) for g in group) + len(s.tails)
        width = max([len(t) for g in group + [s] for t in g.tails] + [len(s.prefix)])
        if group and (n > max_seqs or n * width * vocab > LOGIT_BUDGET):
            yield group
            group = []
        group.append(s)
    if group:
        yield group


def _masked_sum(logits: mx.array, targets: mx.array, lo: list[int], hi: list[int]) -> mx.array:
    """Sum over positions [lo, hi) of log p(targets) under logits; rows are sequences."""
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    lp = picked - mx.logsumexp(logits, axis=-1)
    pos = mx.arange(targets.shape[1])[None, :]
    mask = ((pos >= mx.array(lo)[:, None]) & (pos < mx.array(hi)[:, None])).astype(mx.float32)
    return (lp * mask).sum(axis=1)


def full_logprobs(model: Any, sets: list[ChoiceSet], pad_id: int = 0) -> list[list[float]]:
    """Every choice as one full sequence, right-padded (a causal model never looks ahead,
    so padding needs no mask), one forward for the group."""
    seqs = [(s.prefix + t, len(s.prefix) + st) for s in sets for t, st in zip(s.tails, s.starts)]
    width = max(len(ids) for ids, _ in seqs)
    tokens = mx.array([ids + [pad_id] * (width - len(ids)) for ids, _ in seqs])
    logits = model(tokens[:, :-1])
    # position p predicts token p+1: scored tokens [start, len) are positions [start-1, len-1)
    sums = _masked_sum(logits, tokens[:, 1:], [st - 1 for _, st in seqs], [len(ids) - 1 for ids, _ in seqs])
    mx.eval(sums)
    return _regroup(sets, sums.tolist())


def _batch_cache(model: Any, n: int) -> list[Any]:
    """An empty batch cache for n sequences, built the way mlx-lm's BatchGenerator does
    (merge per-sequence caches), so any architecture it can batch works here."""
    from mlx_lm.models.cache import make_prompt_cache

    per_seq = [make_prompt_cache(model) for _ in range(n)]
    return [type(layer[0]).merge(list(layer)) for layer in zip(*per_seq)]


def shared_prefix_logprobs(model: Any, sets: list[ChoiceSet], pad_id: int = 0) -> list[list[float]]:
    """Prefixes once per case (one forward for the group), the cache copied to each case's
    choices (`filter` with repeated indices), then one forward over every choice tail."""
    lengths = [len(s.prefix) for s in sets]
    width = max(lengths)
    cache = _batch_cache(model, len(sets))
    right = [width - n for n in lengths]
    if max(right) > 0:
        for c in cache:
            c.prepare(lengths=lengths, right_padding=right)
    prefixes = mx.array([s.prefix + [pad_id] * (width - len(s.prefix)) for s in sets])
    out = model(prefixes, cache=cache)
    lasts = out[mx.arange(len(sets)), mx.array(lengths) - 1]  # each prefix's last real position
    if max(right) > 0:
        for c in cache:
            c.finalize()
    per_seq = [(i, t, st) for i, s in enumerate(sets) for t, st in zip(s.tails, s.starts)]
    rows = mx.array([i for i, _, _ in per_seq])
    for c in cache:
        c.filter(rows)
    tail_w = max(len(t) for _, t, _ in per_seq)
    tails = mx.array([t + [pad_id] * (tail_w - len(t)) for _, t, _ in per_seq])
    logits = model(tails, cache=cache)
    # tail token 0 is predicted by the prefix's last position, token p by tail position p-1
    pred = mx.concatenate([lasts[rows][:, None, :].astype(logits.dtype), logits[:, :-1, :]], axis=1)
    sums = _masked_sum(pred, tails, [st for _, _, st in per_seq], [len(t) for _, t, _ in per_seq])
    mx.eval(sums)
    return _regroup(sets, sums.tolist())


def _regroup(sets: list[ChoiceSet], flat: list[float]) -> list[list[float]]:
    out, k = [], 0
    for s in sets:
        out.append(flat[k:k + len(s.tails)])
        k += len(s.tails)
    return out


def choice_logprobs(model: Any, sets: list[ChoiceSet], pad_id: int = 0, *, shared_prefix: bool = True) -> list[list[float]]:
    if shared_prefix:
        try:
            return shared_prefix_logprobs(model, sets, pad_id)
        except (AttributeError, NotImplementedError, ValueError, TypeError):
            # a cache type without batch merge (some hybrid architectures): plain path
            pass
    return full_logprobs(model, sets, pad_id)
