"""python -m corpus --sessions DIR --council council.yaml --out data [--mix-ratio 0.5]

Prepares (or reuses) the corpus and prints its manifest as a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.council import CATEGORIES
from common.errors import ConfigError, one_line

from .prepare import PreparedData, prepare
from .split import SPLITS


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m corpus", description=__doc__.splitlines()[2])
    p.add_argument("--sessions", type=Path, required=True, help="folder of <agent>.jsonl sessions")
    p.add_argument("--council", type=Path, default=Path("council.yaml"))
    p.add_argument("--out", type=Path, default=Path("data"))
    p.add_argument("--mix-ratio", type=float, default=0.5, help="real fraction of train (0.1-0.9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--no-synthetic", action="store_true", help="real sessions only")
    return p.parse_args(argv)


def _n(cells: dict, agent: str, category: str, source: str | None = None) -> int:
    by_source = cells.get(agent, {}).get(category, {})
    return by_source.get(source, 0) if source else sum(by_source.values())


def manifest_table(data: PreparedData) -> Table:
    m = data.manifest
    per = m["per_split"]
    table = Table(title=f"corpus {data.hash[:16]}  ({data.dir})")
    for col in ("agent", "category", "train real", "train synth", "valid", "test"):
        table.add_column(col, justify="left" if col in ("agent", "category") else "right")
    agents = sorted({a for split in SPLITS for a in per[split]})
    for agent in agents:
        for category in [*CATEGORIES, "unknown"]:
            row = [_n(per["train"], agent, category, "real"),
                   _n(per["train"], agent, category, "synthetic"),
                   _n(per["valid"], agent, category), _n(per["test"], agent, category)]
            if any(row):
                table.add_row(agent, category, *map(str, row))
    counts, dup, mix = m["counts"], m["duplicates"], m["mix"]
    table.caption = (f"train {counts['train']}  valid {counts['valid']}  test {counts['test']}  |  "
                     f"mix real {mix['achieved']:.2f} (asked {mix['requested']})  |  "
                     f"duplicates removed {dup['removed']} ({dup['rate']:.1%})")
    return table


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    try:
        data = prepare(a.sessions, a.council, a.out, mix_ratio=a.mix_ratio, seed=a.seed,
                       valid_fraction=a.valid_fraction, test_fraction=a.test_fraction,
                       include_synthetic=not a.no_synthetic)
    except ConfigError as exc:
        print(one_line(exc), file=sys.stderr)
        return 2
    Console().print(manifest_table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
