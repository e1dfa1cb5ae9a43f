"""Memory-vault entries: one markdown note per experiment, so the agents can read their own
training history (root/events/<YYYY>/<MM>/autoresearch-<id>.md); the oldest age out to
root/archive/<YYYY>/<MM>/ once the vault holds more than `retention` entries.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from common.atomic import atomic_write_text
from common.errors import ConfigError

PREFIX = "autoresearch-"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CORE_KEYS = ("id", "date", "mode", "model", "score", "baseline", "result", "reasons")
OLDEST = datetime.min.replace(tzinfo=timezone.utc)


@dataclass
class VaultEntry:
    id: str
    date: datetime
    mode: str
    model: str
    score: float | None
    baseline: float | None
    result: str
    reasons: list[str]
    params: dict
    per_category_delta: dict[str, float]
    extra: dict = field(default_factory=dict)


def front_matter(entry: VaultEntry) -> dict[str, Any]:
    clash = sorted(set(entry.extra) & set(CORE_KEYS))
    if clash:
        raise ConfigError(None, f"extra.{clash[0]}", "would overwrite a core front-matter field")
    # float()/str() so numpy scalars from the eval do not trip yaml.safe_dump
    return {"id": entry.id, "date": entry.date.isoformat(timespec="seconds"), "mode": str(entry.mode),
            "model": str(entry.model), "score": _opt_float(entry.score),
            "baseline": _opt_float(entry.baseline), "result": str(entry.result),
            "reasons": [str(r) for r in entry.reasons], **entry.extra}


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.6g}"
    return str(x)


def _signed(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:+.3f}"


def body(entry: VaultEntry) -> str:
    score = "n/a" if entry.score is None else f"{entry.score:.3f}"
    base = "n/a" if entry.baseline is None else f"{entry.baseline:.3f}"
    lines = [f"# Autoresearch {entry.id}: {entry.result}", "",
             f"{entry.mode} mode on {entry.model}: score {score} against baseline {base}.", "",
             "## What was tried", ""]
    if entry.params:
        lines += ["| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(entry.params.items())]
    else:
        lines.append("(no parameters recorded)")
    lines += ["", "## Per-category delta against baseline", ""]
    if entry.per_category_delta:
        lines += ["| category | delta |", "|---|---|"]
        lines += [f"| {k} | {_signed(v)} |" for k, v in entry.per_category_delta.items()]
    else:
        lines.append("(no baseline to compare against)")
    stats = entry.extra.get("stats")
    if isinstance(stats, dict):
        lines += ["", "## Statistics", ""] + statistics(stats)
    if entry.reasons:
        lines += ["", "## Why", ""] + [f"- {r}" for r in entry.reasons]
    return "\n".join(lines) + "\n"


def _num(x: Any, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else "n/a"


def _ci(ci: Any) -> str:
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2
    return f"[{_num(ci[0], '+.3f')}, {_num(ci[1], '+.3f')}]" if ok else "n/a"


def statistics(stats: dict) -> list[str]:
    """Markdown lines for a verdict's paired statistics (Verdict.stats()); tolerant of
    missing fields, since the entry is rebuilt from a trial's user attrs."""
    if stats.get("n_paired"):
        lines = [f"Paired bootstrap over {stats['n_paired']} dev cases: delta {_num(stats.get('delta'), '+.3f')}, "
                 f"95% CI {_ci(stats.get('delta_ci'))}, P(candidate > baseline) {_num(stats.get('p_better'))}, "
                 f"ties {_num(stats.get('tie_rate'), '.0%')}."]
    else:
        lines = ["(no paired dev cases: nothing to bootstrap)"]
    cats = stats.get("per_category") or {}
    if isinstance(cats, dict) and cats:
        lines += ["", "| category | n | delta | 95% CI | P(better) | P(not worse), BH | ties |",
                  "|---|---|---|---|---|---|---|"]
        for cat, st in cats.items():
            st = st if isinstance(st, dict) else {}
            lines.append(f"| {cat} | {st.get('n', 'n/a')} | {_num(st.get('delta'), '+.3f')} | {_ci(st.get('ci'))} "
                         f"| {_num(st.get('p_better'))} | {_num(st.get('p_adjusted'))} "
                         f"| {_num(st.get('tie_rate'), '.0%')} |")
    noise = stats.get("noise")
    if isinstance(noise, dict):
        p = f" and P {_num(noise.get('required_p'))}" if noise.get("required_p") is not None else ""
        lines += ["", f"Noise bar: delta had to reach {_num(noise.get('required_delta'), '+.3f')}{p} "
                      f"(training-seed sd {_num(noise.get('sd'), '.4f')} "
                      f"from {noise.get('source', 'n/a')}; alpha {noise.get('alpha', 'n/a')} over "
                      f"{noise.get('looks', 'n/a')} look(s)); a real gain of {_num(noise.get('detectable'), '+.3f')} "
                      "passes 80% of the time."]
    hold = stats.get("holdout")
    if isinstance(hold, dict):
        lines += ["", f"Held out (reported, never used for selection): score {_num(hold.get('score'))} "
                      f"against baseline {_num(hold.get('baseline'))}, delta {_num(hold.get('delta'), '+.3f')}, "
                      f"P(candidate > baseline) {_num(hold.get('p_better'))} over {hold.get('n_paired') or 0} "
                      "paired cases."]
    return lines


def render(entry: VaultEntry) -> str:
    try:
        head = yaml.safe_dump(front_matter(entry), sort_keys=False, allow_unicode=True)
    except yaml.YAMLError as exc:
        raise ConfigError(None, "extra", f"not YAML-serialisable: {exc}") from None
    return f"---\n{head}---\n\n{body(entry)}"


def read_front_matter(path: Path) -> dict[str, Any]:
    """The YAML between the first two `---` lines; {} when absent or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---\n", 3)
    try:
        data = yaml.safe_load(text[4:end + 1]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# The date line as front_matter() writes it (yaml.safe_dump quotes an ISO string, so YAML
# reads it back as that very string): read without parsing the whole front matter.
DATE_LINE = re.compile(r"^date: '([0-9T:.+\- ]+)'$", re.MULTILINE)


def _entry_date(path: Path) -> Any:
    """The front matter's `date`. Retention sorts every entry on every write once the vault
    is full: a regex on the date line instead of a YAML parse of the whole front matter
    (measured in benchmarks/README.md); anything else falls back to the parse."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return None
    end = head.find("\n---\n", 3)
    m = DATE_LINE.search(head, 4, end) if head.startswith("---\n") and end > 0 else None
    return m.group(1) if m else read_front_matter(path).get("date")


def _sort_key(path: Path) -> tuple[datetime, str]:
    """Front-matter date (aware; a naive date is local time), then name. Unreadable: oldest."""
    raw = _entry_date(path)
    try:
        when = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
    except ValueError:
        return OLDEST, path.name
    return (when if when.tzinfo else when.astimezone()), path.name


class Vault:
    def __init__(self, root: Path | str, retention: int = 500):
        if not isinstance(retention, int) or retention < 1:
            raise ConfigError(None, "vault.retention", f"must be a positive integer, got {retention!r}")
        self.root = Path(root).expanduser()
        self.retention = retention
        self.events = self.root / "events"
        self.archive = self.root / "archive"

    def path_for(self, entry: VaultEntry) -> Path:
        if not isinstance(entry.id, str) or not ID_RE.match(entry.id):
            raise ConfigError(None, "id", f"unsafe vault entry id {entry.id!r}")
        return self.events / f"{entry.date:%Y}" / f"{entry.date:%m}" / f"{PREFIX}{entry.id}.md"

    def write(self, entry: VaultEntry) -> Path:
        """Write the entry atomically, then enforce retention; returns where the entry now is."""
        path = self.path_for(entry)
        atomic_write_text(path, render(entry))
        moved = self.enforce_retention()
        if path in moved:   # backfilling an entry older than everything kept
            return self.archive / path.relative_to(self.events)
        return path

    def entries(self) -> list[Path]:
        return sorted(self.events.glob(f"*/*/{PREFIX}*.md"))

    def enforce_retention(self) -> list[Path]:
        """Move the oldest entries over the cap to archive/<YYYY>/<MM>/; returns their old paths."""
        entries = self.entries()
        excess = len(entries) - self.retention
        if excess <= 0:
            return []
        moved = []
        for path in sorted(entries, key=_sort_key)[:excess]:
            target = self.archive / path.relative_to(self.events)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            moved.append(path)
        return moved
