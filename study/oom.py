"""Out-of-memory bookkeeping for the night (DESIGN §6: six nights of the same OOM).

An OOM trial is COMPLETE with value 0.0, constraint `oom` = 1 and result "failed:oom"
(objective.py), so TPE ranks its region with the infeasible trials and best_trial skips
it. Here: the rules the night applies on top.
- `known_oom(study, params)`: an exact config that already ran out of memory is never
  trained again; the objective records the known answer at once (TrialContext.known_oom).
- `oom_streak(trials)`: real OOMs in a row at the end of tonight; three end the night.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

OOM_RESULT = "failed:oom"
STREAK_LIMIT = 3


def is_oom(trial: Any) -> bool:
    return trial.user_attrs.get("result") == OOM_RESULT


def is_known_oom(trial: Any) -> bool:
    """An OOM recorded from an earlier trial's answer, without training."""
    return is_oom(trial) and trial.user_attrs.get("oom_known_from") is not None


def oom_streak(trials: Iterable[Any]) -> int:
    """Real OOMs in a row at the end of `trials` (tonight's, in order). A known OOM
    answered without training cost nothing: it neither counts nor breaks the streak."""
    streak = 0
    for t in trials:
        if is_known_oom(t):
            continue
        streak = streak + 1 if is_oom(t) else 0
    return streak


def same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    for k, va in a.items():
        vb = b[k]
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            if not math.isclose(float(va), float(vb), rel_tol=1e-12, abs_tol=0.0):
                return False
        elif va != vb:
            return False
    return True


def oomed_trial(study: Any, params: Mapping[str, Any]) -> Any | None:
    """The first finished trial of this study (this mode and base model) that ran out of
    memory with exactly these params, or None."""
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished() and is_oom(t) and not is_known_oom(t) and same_params(t.params, params):
            return t
    return None


def already_oomed(study: Any, params: Mapping[str, Any]) -> bool:
    return oomed_trial(study, params) is not None


def known_oom(study: Any, params: Mapping[str, Any]) -> str | None:
    """For TrialContext.known_oom: why this config must not run again, or None."""
    t = oomed_trial(study, params)
    if t is None:
        return None
    return (f"this exact config ran out of memory in trial {t.number} "
            f"({t.user_attrs.get('experiment_id', '?')}): not trained again")


def oom_summary(trials: Iterable[Any]) -> str:
    """The line the night prints when the OOM streak ends it."""
    trials = list(trials)
    ooms = [t for t in trials if is_oom(t) and not is_known_oom(t)][-STREAK_LIMIT:]
    shown = "; ".join(f"#{t.number} " + ", ".join(f"{k}={v:g}" for k, v in sorted(t.params.items())
                                                 if isinstance(v, (int, float)))
                      for t in ooms)
    return (f"stopping: {len(ooms)} trials in a row ran out of memory ({shown}). Every one is recorded "
            f"as infeasible (constraint oom), so the search now avoids that region; lower "
            f"MAX_SEQ_LENGTH / NUM_LAYERS / LORA_RANK or the batch size if it keeps happening.")
