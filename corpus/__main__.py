"""python -m corpus --sessions DIR --council council.yaml --out data [--mix-ratio 0.5] [--suite DIR]

Prepares (or reuses) the corpus and prints its manifest as a table. With --suite, the
eval suite is checked for contamination too, and a contaminated holdout exits 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.council import CATEGORIES, load_council
from common.errors import ConfigError, one_line

from .prepare import PreparedData, prepare
from .split import SPLITS


def _cap(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cap wants KEY=SHARE (identity=0.4), got {text!r}") from None


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m corpus", description=__doc__.split("\n\n")[1])
    p.add_argument("--sessions", type=Path, required=True, help="folder of <agent>.jsonl sessions")
    p.add_argument("--council", type=Path, default=Path("council.yaml"))
    p.add_argument("--out", type=Path, default=Path("data"))
    p.add_argument("--mix-ratio", type=float, default=0.5, help="real fraction of train (0.1-0.9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--no-synthetic", action="store_true", help="real sessions only")
    p.add_argument("--near-dup-threshold", type=float, default=0.8)
    p.add_argument("--cap", type=_cap, action="append", metavar="KEY=SHARE",
                   help="largest share of a category or agent (repeatable; default identity=0.4)")
    p.add_argument("--no-caps", action="store_true")
    p.add_argument("--max-chars", type=int, default=6000)
    p.add_argument("--generator-model", default="", help="LiteLLM model for paraphrases")
    p.add_argument("--generator-api-base", default="")
    p.add_argument("--generator-api-key-env", default="")
    p.add_argument("--generator-limit", type=int, default=100)
    p.add_argument("--suite", type=Path, help="eval suite folder to check for contamination")
    return p.parse_args(argv)


def _n(cells: dict, agent: str, category: str, source: str | None = None) -> int:
    by_source = cells.get(agent, {}).get(category, {})
    return by_source.get(source, 0) if source else sum(by_source.values())


def _counts(d: dict) -> str:
    parts = [f"{k} {v}" for k, v in d.items() if v]
    return ", ".join(parts) if parts else "none"


def manifest_table(data: PreparedData) -> Table:
    m = data.manifest
    per = m["per_split"]
    table = Table(title=f"corpus {data.hash[:16]}  ({data.dir})")
    for col in ("agent", "category", "train real", "train synth", "valid", "test"):
        table.add_column(col, justify="left" if col in ("agent", "category") else "right")
    agents = sorted({a for split in SPLITS for a in per[split]})
    for agent in agents:
        for category in [*CATEGORIES, "unknown"]:
            row = [_n(per["train"], agent, category, "real"),
                   _n(per["train"], agent, category, "synthetic"),
                   _n(per["valid"], agent, category), _n(per["test"], agent, category)]
            if any(row):
                table.add_row(agent, category, *map(str, row))
    return table


def summary(m: dict) -> list[str]:
    """The manifest's numbers beside the table, one line per stage."""
    counts, dup, mix = m["counts"], m["duplicates"], m["mix"]
    cleaning = m["cleaning"]
    lines = [
        f"train {counts['train']}  valid {counts['valid']}  test {counts['test']}  "
        f"(unused {counts['unused']})  |  mix real {mix['achieved']:.2f} (asked {mix['requested']})",
        f"duplicates removed {dup['removed']} ({dup['rate']:.1%}: exact {dup['exact']}, "
        f"near {dup['near']} at Jaccard >= {dup['threshold']})  |  by source: "
        + ", ".join(f"{s} {v['rate']:.1%}" for s, v in dup["by_source"].items()),
        f"PII scrubbed: {_counts(cleaning['scrubbed'])}  |  dropped: {_counts(cleaning['dropped'])}"
        f"  |  malformed lines: {_counts(m['malformed']['by_reason'])}",
        "train categories: " + ", ".join(f"{k} {v:.0%}" for k, v in m["train_category_mix"].items()),
        "caps: " + (_counts(m["balance"]["caps"]) + "; cut: "
                    + (", ".join(f"{c['key']} -{c['removed']} ({c['scope']})"
                                 for c in m["balance"]["cuts"]) or "nothing")),
    ]
    if m["generator"]["enabled"]:
        g = m["generator"]
        lines.append(f"paraphrases: {g['accepted']} of {g['asked']} kept; "
                     f"rejected {_counts(g['rejected'])}")
    if "contamination" in m:
        lines.append(_contamination_line(m["contamination"]))
    return lines


def _contamination_line(c: dict) -> str:
    bad = c["contaminated_holdout"]
    head = f"contamination ({c['n']}-gram >= {c['threshold']:.0%}): "
    if bad:
        return head + f"HOLDOUT CONTAMINATED: {', '.join(bad)}"
    return head + f"holdout clean; dev cases over: {len(c['contaminated_dev'])}"


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    caps = {} if a.no_caps else (dict(a.cap) if a.cap else None)
    try:
        cases = None
        if a.suite:
            from evaluation.suite import load_suite

            cases = load_suite(a.suite, load_council(a.council))
        data = prepare(a.sessions, a.council, a.out, mix_ratio=a.mix_ratio, seed=a.seed,
                       valid_fraction=a.valid_fraction, test_fraction=a.test_fraction,
                       include_synthetic=not a.no_synthetic,
                       near_dup_threshold=a.near_dup_threshold, caps=caps,
                       max_chars=a.max_chars, generator_model=a.generator_model,
                       generator_api_base=a.generator_api_base,
                       generator_api_key_env=a.generator_api_key_env,
                       generator_limit=a.generator_limit, suite_cases=cases)
    except ConfigError as exc:
        print(one_line(exc), file=sys.stderr)
        return 2
    console = Console()
    console.print(manifest_table(data))
    for line in summary(data.manifest):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    c = data.manifest.get("contamination")
    if c and not c["ok"]:
        print("holdout contaminated: " + ", ".join(c["contaminated_holdout"]), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
