"""The end-of-night table, readable where launchd sends it: a file with no terminal, which
rich lays out 80 columns wide. Twelve equal columns came out four characters wide there
("resul / t"); here the short facts keep whole columns (never wrapped) and the config and
the first reason share one wide column that wraps at spaces, so any width from 80 up reads.
"""
from __future__ import annotations

from typing import Iterable

from rich import box
from rich.table import Table

# Parameters worth showing on the morning screen, with their short names.
SHOWN = {"LEARNING_RATE": "lr", "NUM_LAYERS": "layers", "LORA_RANK": "rank", "LORA_ALPHA": "alpha",
         "ITERS": "iters", "DATA_MIX_RATIO": "mix"}


def _num(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "–"


def config_text(params: dict) -> str:
    return "  ".join(f"{short} {params[k]:.3g}" for k, short in SHOWN.items() if k in params)


def night_table(trials: Iterable, title: str) -> Table:
    """One row per trial (FrozenTrial-like: number, params, user_attrs, state)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("baseline", justify="right", no_wrap=True)
    table.add_column("config · first reason", ratio=1, min_width=24)
    for t in trials:
        ua = t.user_attrs
        reasons = ua.get("reasons") or []
        detail = config_text(t.params) + (f"\n· {reasons[0]}" if reasons else "")
        table.add_row(str(t.number), str(ua.get("result", t.state.name.lower())), _num(ua.get("score")),
                      _num(ua.get("baseline")), detail)
    return table
