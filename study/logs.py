"""One log file per trial under logs/<date>/, with the lines the progress display shows."""
from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Callable


class TrialLogs:
    def __init__(self, root: Path, keep_nights: int, echo: Callable[[str], None] | None = None,
                 night: date | None = None):
        self.root, self.keep, self.echo = Path(root), keep_nights, echo
        self.night = night or date.today()

    def path_for(self, exp_id: str) -> Path:
        return self.root / self.night.isoformat() / f"{exp_id}.log"

    def write(self, exp_id: str, line: str) -> None:
        path = self.path_for(exp_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{datetime.now():%H:%M:%S} {line}\n")
        if self.echo:
            self.echo(line)

    def rotate(self) -> list[Path]:
        """Keep the newest `keep` nights (folders named YYYY-MM-DD); remove older ones."""
        if not self.root.is_dir():
            return []
        nights = sorted(p for p in self.root.iterdir() if p.is_dir() and _is_date(p.name))
        old = nights[:-self.keep] if len(nights) > self.keep else []
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return old


def _is_date(name: str) -> bool:
    try:
        date.fromisoformat(name)
    except ValueError:
        return False
    return True
