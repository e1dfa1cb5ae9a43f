"""python -m study.experiment — one trial now (the seed's experiment.sh)."""
from __future__ import annotations

import argparse
import sys

from study import nightly
from study.night import add_common_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.experiment",
        description="Run a single experiment: stop serving, train one LoRA adapter with the study's next "
                    "config, evaluate it across the Council, keep or revert it, restart serving.",
    )
    add_common_args(p)
    p.add_argument("--deadline", default=None, metavar="HH:MM",
                   help="refuse to start a trial that would not finish by then (default: [study] deadline)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    forwarded = ["--max-trials", "1", "--config", args.config]
    for flag in ("demo", "dry_run", "full", "skip_prepare", "no_progress"):
        if getattr(args, flag):
            forwarded.append("--" + flag.replace("_", "-"))
    if args.mode:
        forwarded += ["--mode", args.mode]
    if args.deadline:
        forwarded += ["--deadline", args.deadline]
    return nightly.main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
