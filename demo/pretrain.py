"""Full-parameter pre-training of the demo model for a wall-clock budget.

Plain mlx: Adam, next-token cross-entropy over each document (padding masked), one
document per row, each batch padded only to its longest row. No `mx.compile`: on the CPU
it saved nothing measurable here (the time goes to attention and SiLU, not to dispatch)
and it re-traces the 48-block graph (about 20 s) for every new batch width.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np


@dataclass(frozen=True)
class PretrainArgs:
    seconds: float = 100.0
    batch_size: int = 8   # beat 16 per wall-second here: 99 steps to 1.34 vs 54 to 1.88 held-out
    max_seq: int = 96
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    seed: int = 0


@dataclass
class PretrainReport:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    first_loss: float = math.nan
    last_loss: float = math.nan   # mean of the last few steps, less noisy than one batch
    losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 2),
                "first_loss": round(self.first_loss, 4), "last_loss": round(self.last_loss, 4)}


def make_batch(docs: list[list[int]], pad_id: int, args: PretrainArgs) -> tuple[mx.array, mx.array]:
    """(tokens [B, W+1], mask [B, W]): mask is 1 where the next token is real."""
    rows = [d[: args.max_seq + 1] for d in docs]
    width = max(len(r) for r in rows) - 1
    toks = np.full((len(rows), width + 1), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.float32)
    for i, r in enumerate(rows):
        toks[i, : len(r)] = r
        mask[i, : len(r) - 1] = 1.0
    return mx.array(toks), mx.array(mask)


def _loss(model: nn.Module, toks: mx.array, mask: mx.array) -> mx.array:
    logits = model(toks[:, :-1])
    ce = nn.losses.cross_entropy(logits, toks[:, 1:], reduction="none")
    return (ce * mask).sum() / mask.sum()


def batches(docs: list[list[int]], args: PretrainArgs):
    """An endless stream of shuffled batches of similar lengths (deterministic for a seed).

    Sorting each pool of 16 batches by length before cutting it keeps padding (which
    costs as much compute as real tokens here) small without ordering the whole epoch.
    """
    rng = random.Random(args.seed)
    order = list(range(len(docs)))
    pool = args.batch_size * 16
    while True:
        rng.shuffle(order)
        for p in range(0, len(order), pool):
            chunk = sorted(order[p: p + pool], key=lambda j: len(docs[j]))
            cut = [chunk[i: i + args.batch_size]
                   for i in range(0, len(chunk) - args.batch_size + 1, args.batch_size)]
            rng.shuffle(cut)
            for b in cut:
                yield [docs[j] for j in b]


def pretrain(model: nn.Module, docs: list[list[int]], pad_id: int, args: PretrainArgs,
             on_step: Callable[[float, float], None] | None = None) -> PretrainReport:
    """Train until `args.seconds` have passed; on_step(elapsed_s, loss) after each step."""
    if len(docs) < args.batch_size:
        raise ValueError(f"need at least {args.batch_size} documents, got {len(docs)}")
    mx.random.seed(args.seed)
    schedule = optim.join_schedules(
        [optim.linear_schedule(args.learning_rate / 10, args.learning_rate, args.warmup_steps),
         lambda _: args.learning_rate], [args.warmup_steps])
    optimizer = optim.Adam(learning_rate=schedule)
    model.train()
    loss_and_grad = nn.value_and_grad(model, _loss)

    report = PretrainReport()
    start = time.perf_counter()
    for docs_batch in batches(docs, args):
        toks, mask = make_batch(docs_batch, pad_id, args)
        loss, grads = loss_and_grad(model, toks, mask)
        optimizer.update(model, grads)
        mx.eval(model.state, optimizer.state, loss)
        value = loss.item()
        report.steps += 1
        report.tokens += int(mask.sum().item())
        report.losses.append(value)
        elapsed = time.perf_counter() - start
        if on_step:
            on_step(elapsed, value)
        if elapsed >= args.seconds:
            break
    report.seconds = time.perf_counter() - start
    report.first_loss = report.losses[0]
    tail = report.losses[-10:]
    report.last_loss = sum(tail) / len(tail)
    model.eval()
    return report
