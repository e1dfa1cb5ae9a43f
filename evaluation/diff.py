"""python -m evaluation.diff BASE.json CAND.json [--min-delta D] [--split dev|holdout|all] [--json]

Which cases got worse and which got better, grouped by agent and category, so a verdict's
"overall +0.03" can be read case by case (one agent's regression can hide inside an
overall win). A case regressed when its score fell by more than D (default 0: any drop),
improved when it rose by more than D.

Exit 0 nothing regressed, 1 something regressed beyond --min-delta, 2 bad input (a file
missing or failing its .sha256 trailer, or two evals whose case ids differ by more than
10%: no comparison across different rubrics).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from common.errors import ConfigError, one_line

from .results import read_eval_results

EPS = 1e-9
# As the gate's (study/gate.py): more differing ids than this is a different rubric.
MISMATCH_TOLERANCE = 0.10
SPLITS = ("dev", "holdout", "all")


@dataclass(frozen=True)
class CaseChange:
    id: str
    agent: str
    category: str
    split: str
    base: float
    cand: float
    base_label: str | None
    cand_label: str | None

    @property
    def delta(self) -> float:
        return self.cand - self.base


@dataclass
class DiffReport:
    min_delta: float
    split: str
    n_paired: int
    regressed: list[CaseChange] = field(default_factory=list)
    improved: list[CaseChange] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_cand: list[str] = field(default_factory=list)
    mean_delta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def rows(changes: list[CaseChange]) -> list[dict[str, Any]]:
            return [{**asdict(c), "delta": c.delta} for c in changes]
        return {"min_delta": self.min_delta, "split": self.split, "n_paired": self.n_paired,
                "mean_delta": self.mean_delta, "regressed": rows(self.regressed),
                "improved": rows(self.improved), "only_base": self.only_base, "only_cand": self.only_cand}


def _cases(results: Any, who: str, split: str) -> dict[str, dict[str, Any]]:
    cases = results.get("cases") if isinstance(results, dict) else None
    if not isinstance(cases, list):
        raise ConfigError(who, "cases", "expected a list of cases")
    out: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(cases):
        if not isinstance(c, dict) or "id" not in c:
            raise ConfigError(who, f"cases[{i}]", "a case needs an id")
        if split != "all" and c.get("split") != split:
            continue
        score = c.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
            raise ConfigError(who, f"cases[{i}].score", f"expected a number, got {score!r}")
        if str(c["id"]) in out:
            raise ConfigError(who, f"cases[{i}].id", f"duplicate case id {c['id']!r}")
        out[str(c["id"])] = c
    return out


def diff_results(base: dict, cand: dict, *, min_delta: float = 0.0, split: str = "all",
                 names: tuple[str, str] = ("baseline", "candidate")) -> DiffReport:
    if split not in SPLITS:
        raise ConfigError(None, "--split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    if not (min_delta >= 0 and min_delta < float("inf")):
        raise ConfigError(None, "--min-delta", f"expected a finite number >= 0, got {min_delta!r}")
    b, c = _cases(base, names[0], split), _cases(cand, names[1], split)
    union = b.keys() | c.keys()
    if union and len(b.keys() ^ c.keys()) / len(union) > MISMATCH_TOLERANCE + EPS:
        raise ConfigError(names[1], "cases", (
            f"case ids differ from {names[0]}'s by {len(b.keys() ^ c.keys()) / len(union):.0%} "
            f"(> {MISMATCH_TOLERANCE:.0%}): not scored on the same rubric"))
    report = DiffReport(min_delta=min_delta, split=split, n_paired=len(b.keys() & c.keys()),
                        only_base=sorted(b.keys() - c.keys()), only_cand=sorted(c.keys() - b.keys()))
    deltas = []
    for cid in sorted(b.keys() & c.keys()):
        x, y = b[cid], c[cid]
        change = CaseChange(id=cid, agent=str(y.get("agent", x.get("agent", "?"))),
                            category=str(y.get("category", x.get("category", "?"))),
                            split=str(y.get("split", "?")), base=float(x["score"]), cand=float(y["score"]),
                            base_label=x.get("label"), cand_label=y.get("label"))
        deltas.append(change.delta)
        if change.delta < -min_delta - EPS:
            report.regressed.append(change)
        elif change.delta > min_delta + EPS:
            report.improved.append(change)
    report.regressed.sort(key=lambda ch: (ch.agent, ch.category, ch.delta, ch.id))
    report.improved.sort(key=lambda ch: (ch.agent, ch.category, -ch.delta, ch.id))
    report.mean_delta = sum(deltas) / len(deltas) if deltas else None
    return report


def _group(changes: Sequence[CaseChange]) -> dict[tuple[str, str], list[CaseChange]]:
    groups: dict[tuple[str, str], list[CaseChange]] = {}
    for ch in changes:
        groups.setdefault((ch.agent, ch.category), []).append(ch)
    return groups


def _section(title: str, changes: Sequence[CaseChange]) -> list[str]:
    lines = [f"{title}: {len(changes)} case{'s' if len(changes) != 1 else ''}"]
    for (agent, cat), group in _group(changes).items():
        mean = sum(ch.delta for ch in group) / len(group)
        lines.append(f"  {agent} / {cat}: {len(group)}, mean {mean:+.3f}")
        for ch in group:
            labels = f"  {ch.base_label} -> {ch.cand_label}" if ch.base_label or ch.cand_label else ""
            lines.append(f"    {ch.id} [{ch.split}]  {ch.base:.3f} -> {ch.cand:.3f}  ({ch.delta:+.3f}){labels}")
    return lines


def render(report: DiffReport) -> str:
    mean = "n/a" if report.mean_delta is None else f"{report.mean_delta:+.4f}"
    lines = [f"{report.n_paired} paired cases ({report.split}), mean delta {mean}, "
             f"threshold {report.min_delta:g}"]
    if report.only_base or report.only_cand:
        lines.append(f"unpaired: {len(report.only_base)} only in the baseline, "
                     f"{len(report.only_cand)} only in the candidate")
    lines += [""] + _section("regressed", report.regressed) + [""] + _section("improved", report.improved)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m evaluation.diff",
                                 description="Per-case regressions and improvements between two evals.")
    ap.add_argument("base", help="the baseline's eval_results.json")
    ap.add_argument("cand", help="the candidate's eval_results.json")
    ap.add_argument("--min-delta", type=float, default=0.0,
                    help="ignore changes of at most this size (default 0: any drop is a regression)")
    ap.add_argument("--split", default="all", choices=SPLITS)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = diff_results(read_eval_results(args.base), read_eval_results(args.cand),
                              min_delta=args.min_delta, split=args.split, names=(args.base, args.cand))
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else render(report))
    return 1 if report.regressed else 0


if __name__ == "__main__":
    sys.exit(main())
