"""results.tsv: the experiment log, exported from the study (the study is the source of truth).

Rewritten atomically after every trial, so it can never disagree with the study for longer
than one trial, and a crash mid-write leaves the previous complete file. After a trial only
that trial's row is read from the study and merged into the file's rows (`export_trial`):
reading every trial of every study each time cost the night more the longer its history.
The night's end exports everything again from the study (`export_results`).
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
    rows.sort(key=_sort_key)
    atomic_write_text(Path(path).expanduser(), render(rows))
    return len(rows)


def _sort_key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row["timestamp"]), str(row["experiment_id"])


def _file_rows(path: Path) -> list[list[str]] | None:
    """The file's rows as cells, or None when it is missing or not this format."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if not lines or lines[0].split("\t") != HEADER:
        return None
    rows = [line.split("\t") for line in lines[1:]]
    return rows if all(len(r) == len(HEADER) for r in rows) else None


def export_trial(studies: Iterable[optuna.Study], study: optuna.Study, trial: FrozenTrial,
                 path: Path | str) -> int:
    """Merge one finished trial's row into path (its earlier row, same experiment id and
    timestamp, replaced); the whole export when the file is missing or unreadable. Returns
    the row count."""
    path = Path(path).expanduser()
    old = _file_rows(path)
    if old is None:
        return export_results(studies, path)
    row = trial_row(trial, study.study_name)
    if row is None:
        return len(old)
    new = [_cell(row.get(col)) for col in HEADER]
    i_id, i_ts = HEADER.index("experiment_id"), HEADER.index("timestamp")
    rows = [r for r in old if (r[i_id], r[i_ts]) != (new[i_id], new[i_ts])] + [new]
    # Same order as export_results: by the cells it sorts on, which are the values' text.
    rows.sort(key=lambda r: (r[i_ts], r[i_id]))
    atomic_write_text(path, "\n".join(["\t".join(HEADER)] + ["\t".join(r) for r in rows]) + "\n")
    return len(rows)
