"""The benchmark's comparison table: one column (markdown) or row (TSV) per model, with
overall, holdout, per category, per agent, latency and tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.council import CATEGORIES


@dataclass
class Entry:
    name: str                        # the label the user gave (or the model name)
    model: str
    api_base: str | None             # already stripped of credentials
    status: str                      # ok | partial: why | failed: why
    results: dict[str, Any] | None   # eval_results (partial when status is partial)
    path: str | None = None          # where its eval_results.json was written


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def metric_rows(entries: list[Entry], agents: list[str]) -> list[tuple[str, list[Any]]]:
    """(metric name, one value per entry): the table's content, shared by both formats."""
    def get(fn):
        return [fn(e.results) if e.results else None for e in entries]

    cats = [c for c in CATEGORIES if any(e.results and c in e.results["per_category"] for e in entries)]
    rows: list[tuple[str, list[Any]]] = [
        ("status", [e.status for e in entries]),
        ("overall (dev)", get(lambda r: r["overall"])),
        ("holdout", get(lambda r: r["holdout"]["overall"])),
    ]
    rows += [(f"category {c}", get(lambda r, c=c: r["per_category"].get(c))) for c in cats]
    rows += [(f"agent {a}", get(lambda r, a=a: r["per_agent"].get(a))) for a in agents
             if any(e.results and a in e.results["per_agent"] for e in entries)]
    rows += [
        ("cases scored", get(lambda r: r["n_cases"])),
        ("cases skipped", get(lambda r: r.get("n_skipped", 0))),
        ("latency ms mean", get(lambda r: r.get("latency_ms", {}).get("mean"))),
        ("latency ms p95", get(lambda r: r.get("latency_ms", {}).get("p95"))),
    ]
    def agent_latency(r: dict[str, Any], a: str) -> Any:
        return r.get("latency_ms", {}).get("per_agent", {}).get(a, {}).get("mean")

    rows += [(f"latency ms mean {a}", get(lambda r, a=a: agent_latency(r, a))) for a in agents
             if any(e.results and agent_latency(e.results, a) is not None for e in entries)]
    rows += [
        ("tokens prompt", get(lambda r: r.get("tokens", {}).get("prompt"))),
        ("tokens completion", get(lambda r: r.get("tokens", {}).get("completion"))),
        ("elapsed s", get(lambda r: r.get("elapsed_s"))),
    ]
    return rows


def _md_cell(x: Any) -> str:
    return _f(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(entries: list[Entry], agents: list[str], title: str = "Council benchmark") -> str:
    head = ["metric"] + [f"{e.name}" for e in entries]
    lines = [f"# {title}", "", "Scores are means over dev cases (holdout: held-out cases). Choice cases are "
             "scored from the generated reply (method generate-match), as a chat API returns no prompt "
             "log-likelihoods; compare with a local eval run with `--choice-mode generate`.", "",
             "| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for name, vals in metric_rows(entries, agents):
        lines.append("| " + " | ".join([name] + [_md_cell(v) for v in vals]) + " |")
    lines += ["", "| model | LiteLLM name | api base | results |", "|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {_md_cell(e.name)} | {_md_cell(e.model)} | {_md_cell(e.api_base)} | {_md_cell(e.path)} |")
    return "\n".join(lines) + "\n"


def _tsv_cell(x: Any) -> str:
    return _f(x, 6).replace("\t", " ").replace("\n", " ")


def render_tsv(entries: list[Entry], agents: list[str]) -> str:
    """One row per model; pandas.read_csv(sep="\\t") reads it."""
    metrics = metric_rows(entries, agents)
    cols = ["name", "model", "api_base"] + [m.replace(" ", "_") for m, _ in metrics] + ["results"]
    out = ["\t".join(cols)]
    for i, e in enumerate(entries):
        vals = [e.name, e.model, e.api_base] + [vals[i] for _, vals in metrics] + [e.path]
        out.append("\t".join(_tsv_cell(v) for v in vals))
    return "\n".join(out) + "\n"
