"""`python -m study.promote --list | --rollback [--adapters DIR]`: inspect or undo promotions."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.errors import ConfigError, one_line
from study.promoter import Promoter


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.promote", description=__doc__)
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="show promoted adapters; * marks current")
    action.add_argument("--rollback", action="store_true", help="repoint current to the adapter before it")
    p.add_argument("--adapters", type=Path, default=Path("adapters"), help="adapters root (default: adapters)")
    return p


def _score(meta: dict | None) -> str:
    value = (meta or {}).get("score")
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def render_list(promoter: Promoter, console: Console) -> None:
    rows = promoter.list()
    if not rows:
        console.print(f"nothing promoted under {promoter.root}")
        return
    table = Table(title=f"promoted adapters in {promoter.root}")
    table.add_column("", width=1)
    table.add_column("id", no_wrap=True)
    table.add_column("promoted at", no_wrap=True)
    table.add_column("score", justify="right")
    table.add_column("source", overflow="fold")
    for row in rows:
        table.add_row("*" if row["current"] else "", row["id"], row["promoted_at"] or "",
                      _score(row.get("meta")), row["source"] or "")
    console.print(table)
    console.print(f"current: {promoter.current_id()}")


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    args = _parser().parse_args(argv)
    console = console or Console()
    promoter = Promoter(args.adapters)
    try:
        if args.list:
            render_list(promoter, console)
        else:
            before = promoter.current_id()
            path = promoter.rollback()
            console.print(f"rolled back {before} -> current: {promoter.current_id()} ({path})", soft_wrap=True)
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
