"""python -m train_core --spec spec.json [--result result.json] [--quiet] [--events]

Exit codes: 0 trained (whatever stopped it), 2 bad input (one line naming file/key),
3 out of memory (the result says stopped_by "oom"), 1 anything else. Without --result
the result JSON goes to stdout.

--events: stdout carries the event protocol (train_core.events) instead: one JSON line
per start / train_loss / val_loss / check / end / error, and stdin takes `stop <reason>`
commands. Progress, warnings and stray prints go to stderr only.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from common.errors import ConfigError, one_line

from .oom import OutOfMemory
from .spec import TrainResult, TrainSpec
from .trainer import train

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_OOM = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_core", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="TrainSpec JSON")
    parser.add_argument("--result", help="where to write the TrainResult JSON (atomically)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--events", action="store_true",
                        help="JSON-lines events on stdout, `stop <reason>` commands on stdin")
    args = parser.parse_args(argv)
    if args.events:
        return run_with_events(args.spec, progress=not args.quiet, result_path=args.result)
    try:
        spec = TrainSpec.from_json(args.spec)
        result = train(spec, progress=not args.quiet)
    except ConfigError as exc:
        print(f"train_core: {one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except OutOfMemory as exc:
        print(f"train_core: out of memory: {one_line(exc)}", file=sys.stderr)
        _emit(exc.result, args.result)
        return EXIT_OOM
    _emit(result, args.result)
    return EXIT_OK


def run_with_events(spec_path: str, *, progress: bool, result_path: str | None = None) -> int:
    from .events import EventBridge, EventWriter, StdinCommands, claim_stdout

    writer = EventWriter(claim_stdout())
    commands = StdinCommands(sys.stdin)
    _fast_blas()
    try:
        spec = TrainSpec.from_json(spec_path)
        result = train(spec, [EventBridge(writer, commands)], progress=progress)
    except ConfigError as exc:
        print(f"train_core: {one_line(exc)}", file=sys.stderr)
        writer.error("config", one_line(exc))
        return EXIT_CONFIG
    except OutOfMemory as exc:
        print(f"train_core: out of memory: {one_line(exc)}", file=sys.stderr)
        writer.error("oom", one_line(exc), exc.result)
        return EXIT_OOM
    except Exception as exc:  # the parent gets one line; the traceback goes to stderr
        traceback.print_exc(file=sys.stderr)
        writer.error("error", f"{type(exc).__name__}: {one_line(exc)}")
        return EXIT_ERROR
    if result_path:
        result.to_json(result_path)
    writer.end(result)
    return EXIT_OK


def _fast_blas() -> None:
    """Linux CPU: mlx's GEMM through OpenBLAS (common/fastblas.py, which travels to the
    node with common/); a no-op elsewhere; best effort, as in the parent process."""
    try:
        from common.fastblas import enable
    except ImportError:
        return
    try:
        enable()
    except Exception:  # an optimisation must never fail a run
        pass


def _emit(result: TrainResult | None, path: str | None) -> None:
    if result is None:
        return
    if path:
        result.to_json(path)
    else:
        print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    sys.exit(main())
