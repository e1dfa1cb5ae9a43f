"""`python -m study.promote --list | --rollback | --use ID [--adapters DIR] [--config F] [--demo]`:
inspect, undo or repair promotions. A change of current restarts serving ([serving] of the
config) and probes that it answers as the new current's eval recorded (exit 5 if not)."""
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
    action.add_argument("--use", metavar="ID", help="point current at an adapter already in promoted/ "
                                                    "(repairs a current whose folder was deleted)")
    p.add_argument("--adapters", type=Path, default=None,
                   help="adapters root (default: [paths] adapters of --config, else adapters)")
    p.add_argument("--config", type=Path, default=None,
                   help="autoresearch.toml whose [serving] is restarted and probed after a change of current "
                        "(default: ./autoresearch.toml when it exists)")
    p.add_argument("--demo", action="store_true", help="the demo's adapters and serving (under [demo] root)")
    return p


def _settings(args: argparse.Namespace):
    path = args.config or Path("autoresearch.toml")
    if args.config is None and not path.exists():
        return None
    from study.config import load_settings
    return load_settings(path, demo=args.demo)


def restart_serving(settings, promoter: Promoter, console: Console) -> int:
    """Serving follows the new current: restarted per [serving], then probed (study.keeper)."""
    from study.keeper import ServingKeeper, base_eval_path, expected_eval, serving_model
    from study.probe import Probe
    from study.serving import ServingError, make_serving
    s = settings.serving
    if s.backend == "none":
        console.print("serving: none here ([serving] backend), nothing to restart")
        return 0
    model_dir = serving_model(settings)
    base = base_eval_path(settings, model_dir)
    keeper = ServingKeeper(make_serving(settings, model_dir, promoter.root), promoter,
                           expected_eval(promoter, lambda: base),
                           probe=Probe(f"http://{s.host}:{s.port}", settings.root / "council.yaml"),
                           log=lambda line: console.print(line, soft_wrap=True))
    try:
        report = keeper.ensure()
    except ServingError as exc:
        print(f"error: serving: {exc}", file=sys.stderr)
        return 5
    console.print(f"serving {report.adapter or 'the base model'} ({s.backend}"
                  + (", restarted" if report.started else ", already serving it") + ")")
    return 0


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
    try:
        settings = _settings(args)
        root = args.adapters or (settings.path(settings.paths.adapters) if settings else Path("adapters"))
        promoter = Promoter(root)
        if args.list:
            render_list(promoter, console)
        elif args.use:
            path = promoter.promote(promoter.promoted / args.use, args.use, meta={"via": "study.promote --use"})
            console.print(f"current: {promoter.current_id()} ({path})", soft_wrap=True)
            return restart_serving(settings, promoter, console) if settings else 0
        else:
            before = promoter.current_id()
            path = promoter.rollback(to_base=True)
            console.print(f"rolled back {before} -> current: {promoter.current_id() or 'none, the base model'}"
                          + (f" ({path})" if path else ""), soft_wrap=True)
            return restart_serving(settings, promoter, console) if settings else 0
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
