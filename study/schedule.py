"""What launchd and systemd start: the same command, logs and PATH on both."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from study.config import Settings, parse_hhmm


@dataclass(frozen=True)
class Job:
    label: str
    argv: list[str]
    workdir: Path
    hour: int
    minute: int
    stdout: Path
    stderr: Path
    path_env: str


def nightly_job(settings: Settings, config_path: Path) -> Job:
    hour, minute = parse_hhmm(settings.schedule.start)
    logs = settings.path(settings.paths.logs)
    # The project's own interpreter: launchd and systemd start with an almost empty PATH.
    python = Path(sys.executable)
    path_env = os.pathsep.join(dict.fromkeys([str(python.parent), "/opt/homebrew/bin", "/usr/local/bin",
                                              "/usr/bin", "/bin", "/usr/sbin", "/sbin"]))
    return Job(
        label=settings.schedule.label,
        argv=[str(python), "-m", "study.nightly", "--config", str(config_path.resolve()), "--no-progress"],
        workdir=settings.root.resolve(),
        hour=hour, minute=minute,
        stdout=logs / "nightly.out.log", stderr=logs / "nightly.err.log",
        path_env=path_env,
    )


def serving_job(settings: Settings) -> Job:
    """council-mlx as a user agent of its own, for users who want launchd to keep it up."""
    from study.serving import managed_argv
    logs = settings.path(settings.paths.logs)
    job = nightly_job(settings, Path(settings.file))
    return Job(label=settings.serving.label, argv=managed_argv(settings), workdir=job.workdir,
               hour=0, minute=0, stdout=logs / "council-mlx.out.log", stderr=logs / "council-mlx.err.log",
               path_env=job.path_env)
