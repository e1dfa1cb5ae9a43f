"""python -m study.systemd install|uninstall|print — a user service and 02:00 timer (Linux)."""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from common.atomic import atomic_write_text
from common.errors import ConfigError, one_line
from study.config import load_settings
from study.schedule import Job, nightly_job

UNIT = "council-autoresearch"


def units_dir() -> Path:
    return Path.home() / ".config" / "systemd" / "user"


def service_text(job: Job) -> str:
    return (
        "[Unit]\n"
        "Description=council-autoresearch nightly search\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"WorkingDirectory={job.workdir}\n"
        f"ExecStart={shlex.join(job.argv)}\n"
        f"Environment=PATH={job.path_env}\n"
        f"StandardOutput=append:{job.stdout}\n"
        f"StandardError=append:{job.stderr}\n"
        # SIGTERM first (the night records the trial and restarts serving), then wait.
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=60\n"
    )


def timer_text(job: Job) -> str:
    return (
        "[Unit]\n"
        "Description=Start council-autoresearch every night\n\n"
        "[Timer]\n"
        f"OnCalendar=*-*-* {job.hour:02d}:{job.minute:02d}:00\n"
        "Persistent=true\n"
        f"Unit={UNIT}.service\n\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )


def _systemctl(*args: str) -> subprocess.CompletedProcess | None:
    if not shutil.which("systemctl"):
        return None
    return subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m study.systemd",
                                 description="Install, remove or print the systemd user service and timer that "
                                             "start the night at [schedule] start (02:00, Persistent=true).")
    ap.add_argument("action", choices=("install", "uninstall", "print"))
    ap.add_argument("--config", default="autoresearch.toml")
    args = ap.parse_args(argv)
    try:
        job = nightly_job(load_settings(args.config), Path(args.config))
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    service, timer = units_dir() / f"{UNIT}.service", units_dir() / f"{UNIT}.timer"
    if args.action == "print":
        print(f"# {service}\n{service_text(job)}\n# {timer}\n{timer_text(job)}", end="")
        return 0
    if args.action == "install":
        job.stdout.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(service, service_text(job))
        atomic_write_text(timer, timer_text(job))
        print(f"wrote {service}\nwrote {timer}")
        out = _systemctl("daemon-reload")
        if out is not None and out.returncode == 0:
            en = _systemctl("enable", "--now", f"{UNIT}.timer")
            print("enabled" if en and en.returncode == 0 else f"enable it with: systemctl --user enable --now {UNIT}.timer")
        else:
            print(f"enable it with: systemctl --user daemon-reload && systemctl --user enable --now {UNIT}.timer")
        return 0
    _systemctl("disable", "--now", f"{UNIT}.timer")
    for f in (service, timer):
        f.unlink(missing_ok=True)
        print(f"removed {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
