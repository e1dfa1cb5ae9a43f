"""python -m study.launchd install|uninstall|print — the 02:00 LaunchAgent (macOS)."""
from __future__ import annotations

import argparse
import os
import platform
import plistlib
import subprocess
import sys
from pathlib import Path

from common.atomic import atomic_write_bytes
from common.errors import ConfigError, one_line
from study.config import load_settings
from study.schedule import Job, nightly_job, serving_job


def agents_dir() -> Path:
    return Path.home() / "Library" / "LaunchAgents"


def plist_for(job: Job, *, calendar: bool = True, keep_alive: bool = False) -> dict:
    d = {
        "Label": job.label,
        "ProgramArguments": job.argv,
        "WorkingDirectory": str(job.workdir),
        "StandardOutPath": str(job.stdout),
        "StandardErrorPath": str(job.stderr),
        "EnvironmentVariables": {"PATH": job.path_env},
        "RunAtLoad": False,
    }
    if calendar:
        d["StartCalendarInterval"] = {"Hour": job.hour, "Minute": job.minute}
    if keep_alive:
        d["KeepAlive"] = True
        d["RunAtLoad"] = True
    return d


def _launchctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["launchctl", *args], capture_output=True, text=True, check=False)


def install(job: Job, plist: dict, *, load: bool) -> Path:
    path = agents_dir() / f"{job.label}.plist"
    job.stdout.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, plistlib.dumps(plist))
    if load:
        domain = f"gui/{os.getuid()}"
        _launchctl("bootout", domain, str(path))  # a previous version, if loaded
        out = _launchctl("bootstrap", domain, str(path))
        if out.returncode != 0:
            raise RuntimeError(f"launchctl bootstrap {domain} {path}: {out.stderr.strip()}")
    return path


def uninstall(label: str, *, unload: bool) -> Path:
    path = agents_dir() / f"{label}.plist"
    if unload and path.exists():
        _launchctl("bootout", f"gui/{os.getuid()}", str(path))
    path.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m study.launchd",
                                 description="Install, remove or print the LaunchAgent that starts the night "
                                             "at [schedule] start (02:00). On macOS install also loads it.")
    ap.add_argument("action", choices=("install", "uninstall", "print"))
    ap.add_argument("--config", default="autoresearch.toml")
    ap.add_argument("--serving", action="store_true",
                    help="the council-mlx agent (managed mlx_lm server, kept alive) instead of the nightly")
    args = ap.parse_args(argv)
    try:
        settings = load_settings(args.config)
        job = serving_job(settings) if args.serving else nightly_job(settings, Path(args.config))
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    plist = plist_for(job, calendar=not args.serving, keep_alive=args.serving)
    on_mac = platform.system() == "Darwin"
    if args.action == "print":
        sys.stdout.write(plistlib.dumps(plist).decode())
        return 0
    if args.action == "install":
        path = install(job, plist, load=on_mac)
        print(f"wrote {path}")
        if on_mac:
            print(f"loaded: launchctl print gui/{os.getuid()}/{job.label}")
        else:
            print(f"not macOS: load it there with  launchctl bootstrap gui/$(id -u) {path}"
                  "  (on Linux use python -m study.systemd install)")
        return 0
    path = uninstall(job.label, unload=on_mac)
    print(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
