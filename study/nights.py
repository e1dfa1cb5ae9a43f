"""Which night a run belongs to, and what a run says when that night's trials are taken.

The per-night trial cap (`[study] max_trials`, `--max-trials`) counts the trials claimed
for one night by every run and worker of it (study/workers.py, user attr `night`). A
scheduled night is the window from `[schedule] start` to the deadline; a run started by
hand outside it (the owner's "run up to 4 experiments now" in the afternoon) is a night
of its own, so it never takes the scheduled night's trials.

The window is the configured one, `[schedule] start` → `[study] deadline`, whatever a run's
own `--deadline`: a run at 19:00 with `--deadline 22:00` is a run by hand, not part of
that morning's night. A scheduled night is keyed by its window's start, so workers whose
deadlines differ still share it (they need the same `[schedule] start`). A demo night
without `--deadline` is a window of its own, from when it starts to its deadline.
"""
from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from study.config import parse_hhmm
from study.deadline import next_deadline

if TYPE_CHECKING:
    import optuna

    from study.night import Plan


@dataclass(frozen=True)
class Night:
    key: str                 # the trials' `night` user attr
    scheduled: bool          # started inside the window, or by hand outside it
    start: datetime          # the window's start (scheduled) or the run's own start (by hand)
    end: datetime            # the window's end (the configured deadline)

    def describe(self) -> str:
        if self.scheduled:
            return (f"the night {self.start:%Y-%m-%d %H:%M} → {self.end:%H:%M}: its trial cap is "
                    "shared by every run and worker started in that window")
        return (f"a run by hand (started {self.start:%Y-%m-%d %H:%M}, outside the scheduled window): "
                "a trial cap of its own; the scheduled night's is untouched")


def night_of(started: datetime, window_start: str, window_end: str, run_id: str) -> Night:
    """The window (HH:MM → HH:MM) that ends next after `started`; a run started inside it
    belongs to that night, keyed by the window's start; one started outside it is keyed by
    its start and run_id (a cap of its own)."""
    end = next_deadline(window_end, started)
    h, m = parse_hhmm(window_start)
    start = end.replace(hour=h, minute=m)
    if start >= end:
        start -= timedelta(days=1)
    if start <= started:
        return Night(f"{start:%Y-%m-%dT%H:%M}", True, start, end)
    return Night(f"manual/{started.isoformat(timespec='seconds')}/{run_id}", False, started, end)


def rerun_command(argv: Sequence[str], max_trials: int) -> str:
    """The command line that was run, with --max-trials set to max_trials."""
    kept: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--max-trials":
            skip = True
        elif not a.startswith("--max-trials="):
            kept.append(a)
    return shlex.join(["python", "-m", "study.nightly", *kept, "--max-trials", str(max_trials)])


def cap_taken_line(night: Night, workers: Iterable[str], cap: int, argv: Sequence[str]) -> str:
    """One line for a run that trains nothing because its night's cap is taken: the
    numbers, by whom, and what to type to run more. `workers`: each claimed trial's worker."""
    by = Counter(workers)
    who = ", ".join(f"{w} ran {n}" for w, n in by.most_common())
    taken = sum(by.values())
    where = (f"the night {night.start:%Y-%m-%d %H:%M}→{night.end:%H:%M}" if night.scheduled
             else f"this run ({night.start:%H:%M})")
    return (f"nothing to do: {where} has taken {taken} of its {cap} trials ({who}); "
            f"to run {cap} more now: {rerun_command(argv, taken + cap)} (--max-trials counts the whole night)")


def cap_taken(study: "optuna.Study | None", p: "Plan") -> str | None:
    """The line cap_taken_line() says when this night's trials are all claimed, else None."""
    from study.workers import tonight
    if study is None:
        return None
    claimed = tonight(study.get_trials(deepcopy=False), p.night.key)
    if len(claimed) < p.max_trials:
        return None
    return cap_taken_line(p.night, (str(t.user_attrs.get("worker", "?")) for t in claimed), p.max_trials, p.argv)


def existing_study(p: "Plan") -> "optuna.Study | None":
    """The plan's study if it exists already (nothing is created for a fresh one)."""
    import optuna

    from study.storage import open_storage
    s = p.settings
    url = s.storage_url()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    storage = open_storage(url, heartbeat_interval=s.study.heartbeat_interval,
                           grace_period=s.study.grace_period, max_retry=s.study.max_retry)
    try:
        return optuna.load_study(study_name=p.study_name, storage=storage)
    except KeyError:
        return None


EXIT_CAP_REACHED = 6    # a run that trained nothing because its night's trials were taken
