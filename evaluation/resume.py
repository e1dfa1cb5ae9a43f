"""Robust runs: a journal of finished cases (resume after a crash or a spent budget), the
budget itself, and the loop that runs work units against both.

The journal `<out>.partial.jsonl` is a header line (the run's fingerprint) followed by
one line per finished unit (a batch of cases), each written with a single `write` and
fsynced. A line is committed only once it ends with a newline: a crash mid-write leaves
a torn last line that the next load ignores, so it never yields half a batch.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from common.errors import ConfigError


class BudgetExceeded(Exception):
    """The run stopped at a unit boundary because its time or token budget was spent.
    `results` holds what was finished (an eval_results dict with complete=False)."""

    def __init__(self, reason: str, results: dict[str, Any] | None = None, journal: str | None = None):
        self.reason, self.results, self.journal = reason, results, journal
        super().__init__(reason)


@dataclass
class Budget:
    seconds: float | None = None     # wall clock of this invocation
    tokens: int | None = None        # prompt + completion tokens processed by this invocation
    t0: float = field(default_factory=time.perf_counter)
    used_tokens: int = 0

    def add(self, n: int) -> None:
        self.used_tokens += int(n)

    def exceeded(self) -> str | None:
        """Why the next unit must not start, or None."""
        spent = time.perf_counter() - self.t0
        if self.seconds is not None and spent >= self.seconds:
            return f"time budget spent: {spent:.1f} s of {self.seconds:g} s"
        if self.tokens is not None and self.used_tokens >= self.tokens:
            return f"token budget spent: {self.used_tokens} of {self.tokens} tokens"
        return None


def journal_path(out: str | os.PathLike) -> Path:
    return Path(f"{out}.partial.jsonl")


class Journal:
    """Append-only record of finished cases for one run configuration."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], *, resume: bool):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._done: dict[str, dict[str, Any]] = {}
        if resume and self.path.is_file() and b"\n" in self.path.read_bytes():
            self._done = self._load()
        else:  # nothing to resume (a header torn by a crash counts as nothing)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_line({"fingerprint": fingerprint}, mode="w")

    def _load(self) -> dict[str, dict[str, Any]]:
        lines = self.path.read_bytes().split(b"\n")
        try:
            head = json.loads(lines[0])["fingerprint"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(str(self.path), None, "not a partial-results journal (bad header line)") from None
        for key in sorted(set(head) | set(self.fingerprint)):
            if head.get(key) != self.fingerprint.get(key):
                raise ConfigError(str(self.path), f"fingerprint.{key}",
                                  f"the partial results were made with {head.get(key)!r}, this run has "
                                  f"{self.fingerprint.get(key)!r}: resume with the same settings, or run "
                                  f"without --resume to start over")
        done: dict[str, dict[str, Any]] = {}
        # the last element is b"" after a committed line, or a torn line: either way skipped
        for raw in lines[1:-1]:
            try:
                records = json.loads(raw)
            except ValueError:
                continue  # a torn line can only be the last; be lenient anyway
            for rec in records:
                done[rec["id"]] = rec
        if lines[-1]:  # drop the torn tail so later appends start on a fresh line
            with open(self.path, "r+b") as fh:
                fh.truncate(self.path.stat().st_size - len(lines[-1]))
        return done

    def _write_line(self, obj: Any, mode: str = "a") -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        with open(self.path, mode + "b") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def done(self) -> dict[str, dict[str, Any]]:
        return dict(self._done)

    def append(self, records: list[dict[str, Any]]) -> None:
        if records:
            self._write_line(records)
            for rec in records:
                self._done[rec["id"]] = rec

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Unit:
    """A batch of cases computed together; `run()` returns one record per case id (a
    scored row, or a skip record {"id", ..., "skipped": reason})."""
    ids: list[str]
    run: Callable[[], list[dict[str, Any]]]


def record_tokens(rec: dict[str, Any]) -> int:
    t = rec.get("tokens") or {}
    return int(t.get("prompt", 0)) + int(t.get("completion", 0))


def run_units(units: Iterable[Unit], journal: Journal | None, budget: Budget,
              tick: Callable[[int], None] = lambda n: None,
              done: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Run every unit not already in the journal, journaling each as it finishes.
    Returns (records by id, None) when all ran, or (records so far, why) when the budget
    stopped it at a unit boundary. The budget is checked before a unit starts, so a run
    that finishes its last unit past the budget is still complete."""
    records = dict(done if done is not None else (journal.done() if journal else {}))
    for unit in units:
        if all(i in records for i in unit.ids):
            tick(len(unit.ids))
            continue
        why = budget.exceeded()
        if why:
            return records, why
        out = unit.run()
        if journal is not None:
            journal.append(out)
        for rec in out:
            records[rec["id"]] = rec
            budget.add(record_tokens(rec))
        tick(len(unit.ids))
    return records, None
