"""The brief the proposer sends its model: what the study knows, compact enough to send
between two trials (README "The proposer" has its size in tokens).

program.md's agenda (its opening, the Council's rules, the lessons), the search space with
its ranges, the study's trials as results.tsv-style rows (with the gate's reasons and each
proposal's hypothesis), and the per-category and per-agent deltas of the best and the
latest trial against the baseline. Pure functions of their inputs: the same study gives
the same brief, and a test can read it.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

from optuna.trial import FrozenTrial, TrialState

from study.results import trial_row
from study.space import SearchSpace

# program.md sections the model needs; the search-space table is sent from search_space.yaml.
AGENDA_SECTIONS = ("Warm start", "The Council's rules", "Lessons")
SYSTEM = (
    "You propose the next trial of a hyperparameter search for LoRA fine-tuning. The study "
    "maximises the Council score; a trial that fails a veto or runs out of memory is wasted. "
    "Reply with one JSON object and nothing else: "
    '{"config": {<every parameter: value>}, "hypothesis": "<one sentence: what you expect and why>"}. '
    "Use only the listed parameters, stay inside their ranges and steps, and do not repeat a config "
    "that already ran.")
COLUMNS = ("trial", "source", "score", "baseline", "result", "config", "reasons")


def agenda(program_md: str | None) -> str:
    """The opening paragraph and the AGENDA_SECTIONS of program.md, as written."""
    if not program_md:
        return "(program.md not found)"
    parts = re.split(r"^## ", program_md, flags=re.M)
    opening = [ln for ln in parts[0].splitlines() if ln.strip() and not ln.startswith("# ")]
    kept = ["## " + p.strip() for p in parts[1:] if p.startswith(AGENDA_SECTIONS)]
    return "\n".join([" ".join(opening), *kept]).strip()


def space_lines(space: SearchSpace, mode: str) -> list[str]:
    out = []
    for p in space.for_mode(mode).values():
        rng = f"[{p.low:g}, {p.high:g}]"
        extra = (" log scale" if p.log else "") + (f" step {p.step}" if p.step else "")
        out.append(f"{p.name}: {p.type} in {rng}{extra}, baseline {p.baseline:g}")
    return out


def _source(t: FrozenTrial) -> str:
    prop = t.user_attrs.get("proposer") or {}
    if prop.get("status") == "proposed":
        return "proposed"
    return "queued" if "fixed_params" in t.system_attrs else "sampler"


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))


def trial_lines(trials: Sequence[FrozenTrial], max_rows: int) -> list[str]:
    """Finished trials as tab-separated rows: the latest `max_rows`, plus the best scored
    one when it is older (the model should see the incumbent)."""
    done = [t for t in trials if t.state.is_finished()]
    shown = done[-max_rows:]
    best = max((t for t in done if t.user_attrs.get("feasible") and t.user_attrs.get("score") is not None),
               key=lambda t: t.user_attrs["score"], default=None)
    if best is not None and best not in shown:
        shown = [best, *shown[1:]] if len(shown) >= max_rows else [best, *shown]
    rows = ["\t".join(COLUMNS)]
    for t in shown:
        r = trial_row(t) or {}
        reasons = "; ".join(str(x) for x in t.user_attrs.get("reasons") or [])[:200]
        hyp = (t.user_attrs.get("proposer") or {}).get("hypothesis")
        if hyp:
            reasons = f"hypothesis: {hyp[:160]} | {reasons}"
        rows.append("\t".join([str(t.number), _source(t), _num(r.get("score")), _num(r.get("baseline")),
                               str(r.get("result", "")), str(r.get("config", "")), " ".join(reasons.split())]))
    return rows


def _delta(cand: dict | None, base: dict | None) -> str:
    if not cand or not base:
        return "n/a"
    return ", ".join(f"{k} {cand[k] - base[k]:+.3f}" for k in sorted(cand) if k in base)


def delta_lines(trials: Iterable[FrozenTrial], baseline_eval: dict | None) -> list[str]:
    """Per-category and per-agent deltas of the best feasible and the latest judged trial."""
    judged = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("per_category")]
    if not judged:
        return ["no judged trial yet"]
    base = baseline_eval or {}
    feasible = [t for t in judged if t.user_attrs.get("feasible")]
    picks = [("best", max(feasible, key=lambda t: t.user_attrs.get("score") or 0.0))] if feasible else []
    picks.append(("latest", judged[-1]))
    out = []
    for label, t in picks:
        ua = t.user_attrs
        out.append(f"{label} (trial {t.number}, score {_num(ua.get('score'))}):")
        out.append(f"  per category: {_delta(ua.get('per_category'), base.get('per_category'))}")
        out.append(f"  per agent: {_delta(ua.get('per_agent'), base.get('per_agent'))}")
    return out


def messages(*, program_md: str | None, space: SearchSpace, mode: str, trials: Sequence[FrozenTrial],
             baseline_eval: dict | None, max_rows: int) -> list[dict[str, str]]:
    base = (baseline_eval or {}).get("overall")
    user = "\n".join([
        "# Agenda", agenda(program_md), "",
        f"# Search space ({mode} mode)", *space_lines(space, mode), "",
        f"# Trials so far (baseline now: {_num(base) or 'n/a'})", *trial_lines(trials, max_rows), "",
        "# Deltas against the baseline", *delta_lines(trials, baseline_eval), "",
        "Propose the next trial as JSON: " + json.dumps({"config": {n: "..." for n in space.params},
                                                          "hypothesis": "..."}),
    ])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
