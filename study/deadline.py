"""The night's deadline: no trial starts that cannot finish before it."""
from __future__ import annotations

from datetime import datetime, timedelta

from study.config import parse_hhmm

# Seconds a trial spends outside training and evaluation (loading, exports, serving).
TRIAL_OVERHEAD_S = 20.0


def next_deadline(hhmm: str, now: datetime | None = None) -> datetime:
    """The next HH:MM local time after now (a night that starts at 02:00 ends at 05:00)."""
    now = now or datetime.now()
    h, m = parse_hhmm(hhmm)
    d = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return d if d > now else d + timedelta(days=1)


def seconds_left(deadline: datetime, now: datetime | None = None) -> float:
    return (deadline - (now or datetime.now())).total_seconds()


def trial_fits(deadline: datetime, budget_s: float, eval_s: float, now: datetime | None = None, *,
               min_budget_s: float | None = None) -> bool:
    """A trial (its training budget, or at least min_budget_s of it, then the evaluation and
    the overhead) ends before the deadline. training_budget() then grants what is left."""
    need = budget_s if min_budget_s is None else min(budget_s, min_budget_s)
    return seconds_left(deadline, now) >= need + eval_s + TRIAL_OVERHEAD_S


def training_budget(deadline: datetime, budget_s: float, eval_s: float, now: datetime | None = None) -> float:
    return max(0.0, min(budget_s, seconds_left(deadline, now) - eval_s - TRIAL_OVERHEAD_S))
