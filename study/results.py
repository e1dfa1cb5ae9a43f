"""results.tsv: the experiment log, exported from the study (the study is the source of truth).

Rewritten whole and atomically after every trial, so it can never disagree with the study
for longer than one trial, and a crash mid-write leaves the previous complete file.
Plain tab-separated text (no quoting), as the seed's hand-kept log was: `cut -f`, awk and
pandas `read_csv(sep="\\t")` all read it. Whitespace runs inside a value (tabs, newlines) become one space,
and a leading double quote is dropped, since pandas would otherwise start a quoted field.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from common.atomic import atomic_write_text

# The eleven DESIGN §3 columns, then holdout_score: appended after config so that scripts
# cutting the original columns by position keep working. It is the held-out split's
# overall, reported beside the dev score and never used for selection.
HEADER = ["experiment_id", "timestamp", "mode", "model", "score", "baseline", "result",
          "train_loss", "val_loss", "elapsed_s", "config", "holdout_score"]
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


def compact_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _result(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    if attrs.get("result"):
        return str(attrs["result"])
    if trial.state == TrialState.FAIL:
        return f"failed:{attrs.get('fail_reason', 'crashed')}"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    return ""


def _timestamp(trial: FrozenTrial) -> str:
    if trial.user_attrs.get("timestamp"):
        return str(trial.user_attrs["timestamp"])
    start = trial.datetime_start or trial.datetime_complete
    return start.astimezone().isoformat(timespec="seconds") if start else ""


def trial_row(trial: FrozenTrial, study_name: str | None = None) -> dict[str, Any] | None:
    """One results.tsv row from a finished trial's user attrs; None while it is unfinished.

    Fallbacks for a trial that died before recording them: experiment_id from the study
    name and trial number, timestamp from the trial's start, score from its value.
    """
    if trial.state in UNFINISHED:
        return None
    attrs = trial.user_attrs
    score = attrs.get("score")
    if score is None and trial.state == TrialState.COMPLETE:
        score = trial.value
    return {
        "experiment_id": attrs.get("experiment_id") or f"{study_name or 'trial'}-{trial.number}",
        "timestamp": _timestamp(trial),
        "mode": attrs.get("mode"),
        "model": attrs.get("model"),
        "score": score,
        "baseline": attrs.get("baseline"),
        "result": _result(trial),
        "train_loss": attrs.get("train_loss"),
        "val_loss": attrs.get("val_loss"),
        "elapsed_s": attrs.get("elapsed_s"),
        "config": compact_json(trial.params),
        "holdout_score": attrs.get("holdout_score"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)   # repr round-trips exactly
    text = value if isinstance(value, str) else compact_json(value)
    text = " ".join(text.split())   # tabs/newlines would break the row
    return text.lstrip('"')


def render(rows: Iterable[dict[str, Any]]) -> str:
    lines = ["\t".join(HEADER)]
    lines += ["\t".join(_cell(row.get(col)) for col in HEADER) for row in rows]
    return "\n".join(lines) + "\n"


def export_results(studies: Iterable[optuna.Study], path: Path | str) -> int:
    """Write every finished trial of every study (modes merge) to path; returns the row count."""
    rows = []
    for study in studies:
        for trial in study.get_trials(deepcopy=False):
            row = trial_row(trial, study.study_name)
            if row is not None:
                rows.append(row)
    rows.sort(key=lambda r: (str(r["timestamp"]), str(r["experiment_id"])))
    atomic_write_text(Path(path).expanduser(), render(rows))
    return len(rows)
