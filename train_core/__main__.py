"""python -m train_core --spec spec.json [--result result.json] [--quiet]

Exit codes: 0 trained (whatever stopped it), 2 bad input (one line naming file/key),
3 out of memory (the result says stopped_by "oom"). Without --result the result JSON
goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import sys

from common.errors import ConfigError, one_line

from .oom import OutOfMemory
from .spec import TrainResult, TrainSpec
from .trainer import train

EXIT_OK, EXIT_CONFIG, EXIT_OOM = 0, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_core", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="TrainSpec JSON")
    parser.add_argument("--result", help="where to write the TrainResult JSON (atomically)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
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


def _emit(result: TrainResult | None, path: str | None) -> None:
    if result is None:
        return
    if path:
        result.to_json(path)
    else:
        print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    sys.exit(main())
