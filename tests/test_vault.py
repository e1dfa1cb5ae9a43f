"""Memory-vault entries: front matter, body, per-month paths, retention into archive/."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import yaml

from common.errors import ConfigError
from study.vault import Vault, VaultEntry, read_front_matter

CET = timezone(timedelta(hours=1))


def entry(i: int = 1, when: datetime | None = None, **kw) -> VaultEntry:
    fields = dict(
        id=f"exp-{i:04d}", date=when or datetime(2026, 3, 20, 2, 14, tzinfo=CET), mode="proxy",
        model="Qwen3.5-9B-4bit", score=0.612, baseline=0.588, result="kept",
        reasons=["overall 0.612 >= baseline 0.588 + 0.020"],
        params={"LORA_RANK": 16, "LEARNING_RATE": 5e-6, "DROPOUT": 0.05},
        per_category_delta={"identity": 0.01, "jailbreak": -0.033, "domain": 0.05},
        extra={"p_better": 0.97, "report": "reports/exp-0001.html"})
    fields.update(kw)
    return VaultEntry(**fields)


def split(path):
    text = path.read_text()
    assert text.startswith("---\n")
    _, head, body = text.split("---\n", 2)
    return yaml.safe_load(head), body


def test_write_front_matter_and_body(tmp_path):
    vault = Vault(tmp_path)
    path = vault.write(entry())
    assert path == tmp_path / "events" / "2026" / "03" / "autoresearch-exp-0001.md"
    meta, body = split(path)
    assert meta == {"id": "exp-0001", "date": "2026-03-20T02:14:00+01:00", "mode": "proxy",
                    "model": "Qwen3.5-9B-4bit", "score": 0.612, "baseline": 0.588, "result": "kept",
                    "reasons": ["overall 0.612 >= baseline 0.588 + 0.020"],
                    "p_better": 0.97, "report": "reports/exp-0001.html"}
    assert datetime.fromisoformat(meta["date"]) == datetime(2026, 3, 20, 2, 14, tzinfo=CET)
    assert "| jailbreak | -0.033 |" in body
    assert "| domain | +0.050 |" in body
    assert "| LORA_RANK | 16 |" in body and "| LEARNING_RATE | 5e-06 |" in body
    assert "score 0.612 against baseline 0.588" in body
    assert read_front_matter(path) == meta
    assert vault.entries() == [path]


def test_no_baseline_and_failed_entry(tmp_path):
    path = Vault(tmp_path).write(entry(score=None, baseline=None, result="failed:oom", reasons=[],
                                       per_category_delta={}, extra={}))
    meta, body = split(path)
    assert meta["score"] is None and meta["baseline"] is None and meta["result"] == "failed:oom"
    assert "no baseline to compare against" in body


def test_numpy_scores_and_awkward_text_survive(tmp_path):
    e = entry(score=np.float64(0.7), reasons=["jailbreak 0.64 < floor 0.70", "a: colon # hash\n---"],
              model="model: with colon")
    meta, _ = split(Vault(tmp_path).write(e))
    assert meta["score"] == 0.7 and isinstance(meta["score"], float)
    assert meta["reasons"][1] == "a: colon # hash\n---"
    assert meta["model"] == "model: with colon"


def test_paths_are_per_year_and_month(tmp_path):
    vault = Vault(tmp_path)
    a = vault.write(entry(1, datetime(2025, 12, 31, 23, 0)))
    b = vault.write(entry(2, datetime(2026, 1, 1, 2, 0)))
    assert a.relative_to(tmp_path).parts == ("events", "2025", "12", "autoresearch-exp-0001.md")
    assert b.relative_to(tmp_path).parts == ("events", "2026", "01", "autoresearch-exp-0002.md")


def test_retention_moves_exactly_the_oldest(tmp_path):
    vault = Vault(tmp_path, retention=3)
    start = datetime(2026, 1, 30, 2, 0, tzinfo=timezone.utc)
    # Written out of order, and ids that do not sort by date, so only the date can decide.
    order = [4, 0, 2, 1, 3]
    paths = {}
    for k in order[:3]:
        paths[k] = vault.write(entry(9 - k, start + timedelta(days=k)))
    assert vault.enforce_retention() == []
    paths[order[3]] = vault.write(entry(9 - order[3], start + timedelta(days=order[3])))
    assert len(vault.entries()) == 3
    archived = sorted(tmp_path.glob("archive/*/*/*.md"))
    assert [p.name for p in archived] == ["autoresearch-exp-0009.md"]          # day 0, the oldest
    assert archived[0].relative_to(tmp_path).parts[:3] == ("archive", "2026", "01")
    paths[order[4]] = vault.write(entry(9 - order[4], start + timedelta(days=order[4])))
    kept = sorted(read_front_matter(p)["id"] for p in vault.entries())
    assert kept == ["exp-0005", "exp-0006", "exp-0007"]                         # days 4, 3, 2
    assert sorted(p.name for p in tmp_path.glob("archive/*/*/*.md")) == [
        "autoresearch-exp-0008.md", "autoresearch-exp-0009.md"]
    assert sorted(tmp_path.glob("archive/2026/02/*.md")) == []                  # day 1 is Jan 31


def test_retention_compares_instants_then_names(tmp_path):
    vault = Vault(tmp_path, retention=2)
    same = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)
    vault.write(entry(2, same))
    vault.write(entry(1, same))
    # 02:30+01:00 is 01:30 UTC: the oldest instant, although its wall clock reads later.
    vault.write(entry(3, datetime(2026, 3, 1, 2, 30, tzinfo=CET)))
    assert sorted(p.name for p in tmp_path.glob("archive/*/*/*.md")) == ["autoresearch-exp-0003.md"]
    # exp-0001 and exp-0002 tie on date: the name decides.
    vault.write(entry(4, datetime(2026, 3, 1, 3, 0, tzinfo=timezone.utc)))
    assert sorted(p.name for p in tmp_path.glob("archive/*/*/*.md")) == [
        "autoresearch-exp-0001.md", "autoresearch-exp-0003.md"]


def test_backfilled_old_entry_goes_straight_to_archive(tmp_path):
    vault = Vault(tmp_path, retention=1)
    vault.write(entry(2, datetime(2026, 3, 2)))
    path = vault.write(entry(1, datetime(2026, 3, 1)))
    assert path == tmp_path / "archive" / "2026" / "03" / "autoresearch-exp-0001.md"
    assert path.exists()


def test_unreadable_entry_is_archived_first(tmp_path):
    vault = Vault(tmp_path, retention=1)
    junk = tmp_path / "events" / "2026" / "03" / "autoresearch-junk.md"
    junk.parent.mkdir(parents=True)
    junk.write_text("no front matter here\n")
    vault.write(entry(1))
    assert [p.name for p in vault.entries()] == ["autoresearch-exp-0001.md"]


def test_home_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = Vault("~/.sanctum/memory").write(entry())
    assert path == tmp_path / ".sanctum" / "memory" / "events" / "2026" / "03" / "autoresearch-exp-0001.md"


def test_no_temp_files_left(tmp_path):
    vault = Vault(tmp_path, retention=2)
    for i in range(4):
        vault.write(entry(i, datetime(2026, 3, 1 + i)))
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("autoresearch-")]
    assert leftovers == []


@pytest.mark.parametrize("bad", [dict(id="../x"), dict(id=""), dict(extra={"result": "kept"}),
                                 dict(extra={"obj": object()})])
def test_bad_entries_refused(tmp_path, bad):
    with pytest.raises(ConfigError):
        Vault(tmp_path).write(entry(**bad))
    assert not list(tmp_path.rglob("*.md"))


def test_bad_retention():
    with pytest.raises(ConfigError):
        Vault("/tmp/x", retention=0)


def test_statistics_section_from_a_real_verdict(tmp_path):
    from study.gate import GateConfig, judge

    def summ(overall, dev, hold):
        cases = [{"id": f"{c}-{i}", "split": "dev", "category": c, "score": s}
                 for c, scores in dev.items() for i, s in enumerate(scores)]
        cases += [{"id": f"h{i}", "split": "holdout", "category": "domain", "score": s} for i, s in enumerate(hold)]
        return {"overall": overall, "per_category": {"jailbreak": 0.9}, "per_agent": {}, "cases": cases,
                "holdout": {"overall": sum(hold) / len(hold)}}

    base = summ(0.5, {"domain": [0.5] * 6, "jailbreak": [0.5] * 6}, [0.4] * 4)
    cand = summ(0.6, {"domain": [0.7] * 6, "jailbreak": [0.5] * 6}, [0.5] * 4)
    verdict = judge(cand, base, GateConfig(require_p=0.9, category_p_floor=0.05))
    stats = verdict.stats()
    path = Vault(tmp_path).write(entry(extra={"p_better": verdict.p_better, "stats": stats}))
    meta, body = split(path)
    assert meta["stats"]["per_category"]["domain"]["delta"] == pytest.approx(0.2)   # in the front matter
    assert "## Statistics" in body
    assert "Paired bootstrap over 12 dev cases: delta +0.100, 95% CI [" in body
    assert "P(candidate > baseline) 1.000, ties 50%." in body
    assert "| domain | 6 | +0.200 | [+0.200, +0.200] | 1.000 | 1.000 | 0% |" in body
    assert "| jailbreak | 6 | +0.000 | [+0.000, +0.000] | 0.000 | 1.000 | 100% |" in body
    assert "Held out (reported, never used for selection): score 0.500 against baseline 0.400, delta +0.100" in body
    assert body.index("## Statistics") < body.index("## Why")


def test_statistics_section_tolerates_partial_records(tmp_path):
    stats = {"n_paired": 0, "per_category": {"domain": {"delta": None}}, "holdout": None}
    _, body = split(Vault(tmp_path).write(entry(extra={"stats": stats})))
    assert "(no paired dev cases: nothing to bootstrap)" in body
    assert "| domain | n/a | n/a | n/a | n/a | n/a | n/a |" in body
    _, body = split(Vault(tmp_path).write(entry(i=2)))
    assert "## Statistics" not in body


def test_retention_date_read_fast_agrees_with_the_yaml(tmp_path):
    # Retention reads the date line alone; it must be the date the full front matter holds,
    # and a hand-edited entry (date unquoted, keys moved) must still sort by its own date.
    from study.vault import _entry_date
    vault = Vault(tmp_path, retention=10)
    for i, when in enumerate([datetime(2026, 3, 1, 2, 0), datetime(2026, 3, 1, 2, 30, tzinfo=CET),
                              datetime(2026, 3, 1, 3, 0, 0, 123456, tzinfo=timezone.utc)]):
        path = vault.write(entry(i, when))
        assert _entry_date(path) == read_front_matter(path)["date"] == when.isoformat(timespec="seconds")
    hand = tmp_path / "events" / "2026" / "03" / "autoresearch-hand.md"
    hand.write_text("---\nid: hand\nnote: 'date: 1999-01-01'\ndate: 2026-02-01T00:00:00+00:00\n---\n\nbody\n")
    assert str(_entry_date(hand))[:10] == "2026-02-01"
    Vault(tmp_path, retention=3).enforce_retention()
    assert [p.name for p in tmp_path.glob("archive/*/*/*.md")] == ["autoresearch-hand.md"]
