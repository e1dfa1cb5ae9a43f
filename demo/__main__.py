"""python -m demo [--cache-dir DIR] [--council FILE] [--pretrain-s N] [--seed N] [--force]

Builds (or reuses) the demo model and sample sessions and prints their paths.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from common.errors import ConfigError, one_line

from .build import cache_key, ensure_demo, read_build_info


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[2])
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"),
                   help="the nightly runner uses paths.cache (.cache) too")
    p.add_argument("--council", type=Path, default=Path("council.yaml"))
    p.add_argument("--pretrain-s", type=float, default=100.0, help="pre-training wall-clock seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.pretrain_s <= 0:
        print(f"--pretrain-s: must be > 0, got {a.pretrain_s}", file=sys.stderr)
        return 2
    try:
        if a.force and a.council.is_file():
            key = cache_key(a.council.read_bytes(), a.pretrain_s, a.seed)
            shutil.rmtree(a.cache_dir / f"demo-{key[:12]}", ignore_errors=True)
        assets = ensure_demo(a.cache_dir, a.council, pretrain_seconds=a.pretrain_s,
                             seed=a.seed, progress=not a.quiet)
    except ConfigError as exc:
        print(one_line(exc), file=sys.stderr)
        return 2
    info = read_build_info(assets)
    pre = info["pretrain"]
    print(f"model_dir     {assets.model_dir}")
    print(f"sessions_dir  {assets.sessions_dir}")
    print(f"parameters    {info['parameters']:,}")
    print(f"pretraining   {pre['steps']} steps in {pre['seconds']} s, "
          f"loss {pre['first_loss']} -> {pre['last_loss']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
