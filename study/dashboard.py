"""python -m study.dashboard — optuna-dashboard on this study's storage and artifacts.

Binds 127.0.0.1 unless --allow-remote: the dashboard can delete studies and shows every
trial's outputs, so it is not for the network by default.
"""
from __future__ import annotations

import argparse
import sys

from common.errors import ConfigError, one_line
from study.config import load_settings
from study.serving import LOOPBACK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m study.dashboard",
                                 description="Start optuna-dashboard on the study's storage, with the trials' "
                                             "artifacts (eval_results.json, adapter_config.json, training log).")
    ap.add_argument("--config", default="autoresearch.toml")
    ap.add_argument("--demo", action="store_true", help="the demo's settings")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--allow-remote", action="store_true", help="allow a host other than loopback")
    args = ap.parse_args(argv)
    if args.host not in LOOPBACK and not args.allow_remote:
        print(f"error: --host {args.host} is not loopback; add --allow-remote to expose the dashboard", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config, demo=args.demo)
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    from study.storage import open_storage

    art = settings.path(settings.paths.artifacts)
    art.mkdir(parents=True, exist_ok=True)
    storage = open_storage(settings.storage_url(), heartbeat_interval=settings.study.heartbeat_interval,
                           grace_period=settings.study.grace_period)
    print(f"optuna-dashboard on http://{args.host}:{args.port}  (storage {settings.storage_url()}, artifacts {art})",
          flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port,
                                artifact_store=FileSystemArtifactStore(str(art)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
