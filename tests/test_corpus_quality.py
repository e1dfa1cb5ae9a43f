"""Data quality: the v2 near-duplicate scenario, clusters kept in one split, the identity
cap, PII scrubbing, drops per reason, the OpenAI format, and MinHash == datasketch."""
from __future__ import annotations

import json
import logging
import random
import re
import sys
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmarks/ is not an installed package

from benchmarks.corpus_throughput import LogSpec, write_logs  # noqa: E402
from common.council import load_council  # noqa: E402
from common.errors import ConfigError  # noqa: E402
from corpus import prepare  # noqa: E402
from corpus.dedupe import signatures  # noqa: E402
from corpus.pii import scrub_text  # noqa: E402
from corpus.shingles import Vocab, example_words, fold32, ngrams, stream  # noqa: E402

COUNCIL = REPO / "council.yaml"
SPLITS = ("train", "valid", "test")
ALL = (*SPLITS, "unused")
_WORD = re.compile(r"\w+")


def shingle_set(row: dict, k: int = 3) -> set[tuple]:
    """An independent re-implementation of what "near-duplicate" means: 3-word shingles
    of the non-system turns, each turn led by its role."""
    words: list[str] = []
    for m in row["messages"]:
        if m["role"] != "system":
            words += ["<" + m["role"] + ">"] + _WORD.findall(m["content"].lower())
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def rows(data, split: str) -> list[dict]:
    return data.rows(split)


def near_pairs(all_rows: list[tuple[str, dict]], threshold: float = 0.8) -> list[tuple]:
    by_agent: dict[str, list] = defaultdict(list)
    for split, r in all_rows:
        by_agent[r["agent"]].append((split, r, shingle_set(r)))
    return [(s1, s2, round(jaccard(a, b), 3))
            for items in by_agent.values()
            for (s1, _, a), (s2, _, b) in combinations(items, 2) if jaccard(a, b) >= threshold]


def test_v2_scenario_63_percent_near_duplicates(tmp_path: Path):
    council = load_council(COUNCIL)
    spec = LogSpec(n=1000, dup=0.63, exact=0.0, synthetic=1.0, pii=0, think=0, malformed=0,
                   answer_words=80, seed=2)
    sessions = write_logs(council, tmp_path / "sessions", spec)
    data = prepare(sessions, COUNCIL, tmp_path / "data", include_synthetic=False)
    dup = data.manifest["duplicates"]
    assert dup["total"] == 1000 and dup["by_source"]["synthetic"]["total"] == 1000
    assert abs(dup["rate"] - 0.63) <= 0.02, dup
    assert abs(dup["by_source"]["synthetic"]["rate"] - 0.63) <= 0.02
    assert dup["near"] > 500  # one-edit variants are near, not exact, duplicates
    out = [(s, r) for s in ALL for r in rows(data, s)]
    assert len(out) == 1000 - dup["removed"]
    assert near_pairs(out) == []  # none left, within or across splits
    family_split: dict[str, set] = defaultdict(set)
    cluster_split: dict[str, set] = defaultdict(set)
    for split, r in out:
        family = re.match(r"(fam\d+)", r["messages"][1]["content"]).group(1)
        family_split[family].add("train" if split == "unused" else split)
        cluster_split[r["cluster"]].add("train" if split == "unused" else split)
    assert all(len(s) == 1 for s in family_split.values())
    assert all(len(s) == 1 for s in cluster_split.values())
    assert len(family_split) == 370  # every original survives once
    assert data.manifest["counts"]["valid"] >= 30 and data.manifest["counts"]["test"] >= 30


def _triple(rng: random.Random, vocab: list[str], tag: str) -> list[list[str]]:
    """A and C differ in 12 words (Jaccard ~0.75, both kept); D sits between them
    (~0.85 to each, dropped), so A, C and D form one cluster."""
    base = [tag] + rng.choices(vocab, k=99)
    x, y = rng.choices(vocab, k=12), rng.choices(vocab, k=12)
    a = base[:20] + x + base[32:]
    c = base[:20] + y + base[32:]
    d = base[:20] + x[:6] + y[6:] + base[32:]
    return [a, c, d]


def test_a_cluster_bridged_by_a_dropped_duplicate_stays_in_one_split(tmp_path: Path):
    council = load_council(COUNCIL)
    yoda = council.agent("yoda")
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(3000)]
    lines, triples = [], []
    for t in range(40):
        a, c, d = _triple(rng, vocab, f"tri{t}")
        triples.append((a, c, d))
        # D last: it bridges two kept clusters. D second: C resembles only a dropped
        # example, is kept, and joins D's (so A's) cluster.
        for words in ((a, c, d) if t % 2 else (a, d, c)):
            lines.append(json.dumps({"messages": [
                {"role": "system", "content": yoda.system_prompt},
                {"role": "user", "content": " ".join(words[:30])},
                {"role": "assistant", "content": " ".join(words[30:])}], "category": "domain"}))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "yoda.jsonl").write_text("\n".join(lines) + "\n")

    def as_row(words):
        return {"messages": [{"role": "user", "content": " ".join(words[:30])},
                             {"role": "assistant", "content": " ".join(words[30:])}]}
    a, c, d = (shingle_set(as_row(w)) for w in triples[0])
    assert jaccard(a, c) < 0.8 <= min(jaccard(a, d), jaccard(c, d))  # the premise
    data = prepare(tmp_path / "s", COUNCIL, tmp_path / "data", include_synthetic=False,
                   valid_fraction=0.3, test_fraction=0.3)
    assert data.manifest["duplicates"]["near"] == 40
    where: dict[str, list] = defaultdict(list)
    for split in ALL:
        for r in rows(data, split):
            tag = r["messages"][1]["content"].split()[0]
            where[tag].append(("train" if split == "unused" else split, r["cluster"]))
    assert len(where) == 40
    for tag, found in where.items():
        assert len(found) == 2, tag                      # A and C kept, D dropped
        assert found[0] == found[1], (tag, found)         # one cluster, one split
    assert {s for found in where.values() for s, _ in found} == set(SPLITS)


def _persona_heavy(council, out: Path, n: int = 500, identity: float = 0.76) -> Path:
    rng = random.Random(3)
    vocab = [f"v{i}" for i in range(4000)]
    out.mkdir(parents=True)
    lines: dict[str, list[str]] = defaultdict(list)
    for i in range(n):
        agent = council.agents[i % len(council.agents)]
        category = "identity" if i < identity * n else ("domain", "tool_calling")[i % 2]
        answer = (f"I am {agent.display}." if category == "identity"
                  else " ".join(rng.choices(vocab, k=12)))
        lines[agent.name].append(json.dumps({"messages": [
            {"role": "system", "content": agent.system_prompt},
            {"role": "user", "content": " ".join(rng.choices(vocab, k=10)) + "?"},
            {"role": "assistant", "content": answer}], "category": category}))
    for agent, ls in lines.items():
        (out / f"{agent}.jsonl").write_text("\n".join(ls) + "\n")
    return out


def test_persona_heavy_corpus_comes_out_within_the_cap(tmp_path: Path, caplog):
    council = load_council(COUNCIL)
    sessions = _persona_heavy(council, tmp_path / "s")
    with caplog.at_level(logging.WARNING, logger="corpus"):
        data = prepare(sessions, COUNCIL, tmp_path / "data", include_synthetic=False)
    m = data.manifest
    assert m["duplicates"]["removed"] == 0
    for split in SPLITS:
        assert m["shares"][split]["category"]["identity"] <= 0.40, split
        got = rows(data, split)
        assert sum(r["category"] == "identity" for r in got) / len(got) <= 0.40
    cut = next(c for c in m["balance"]["cuts"] if c["scope"] == "real")
    assert cut["key"] == "identity" and cut["share_before"] == pytest.approx(0.76, abs=0.005)
    assert any("identity was 76.0% of real examples" in r.getMessage() for r in caplog.records)
    # With the council's templates mixed in, at both ends of the mix range.
    for ratio in (0.2, 0.8):
        mixed = prepare(sessions, COUNCIL, tmp_path / "data", mix_ratio=ratio)
        assert mixed.manifest["shares"]["train"]["category"]["identity"] <= 0.40
        assert abs(mixed.manifest["mix"]["achieved"] - ratio) < 0.02
    # An agent cap, and caps that are not categories or agents.
    capped = prepare(sessions, COUNCIL, tmp_path / "data", caps={"yoda": 0.1})
    assert capped.manifest["shares"]["train"]["agent"]["yoda"] <= 0.1
    with pytest.raises(ConfigError, match="caps.gossip"):
        prepare(sessions, COUNCIL, tmp_path / "data", caps={"gossip": 0.3})
    with pytest.raises(ConfigError, match="caps.identity"):
        prepare(sessions, COUNCIL, tmp_path / "data", caps={"identity": 1.5})


def test_scrub_text_kinds_and_what_it_leaves_alone():
    found = Counter()
    text = ("Mail jo.smith@example.com or +44 20 7946 0958, (555) 123-4567; hosts 10.0.0.12 "
            "and fe80::1ff:fe23:4567:890a; key sk-abcdEFGH1234ijklMNOP5678 and "
            "AKIAIOSFODNN7EXAMPLE; Authorization: Bearer abc.def-ghi_jkl~mno12345")
    out = scrub_text(text, found)
    assert dict(found) == {"email": 1, "phone": 2, "ip": 2, "api_key": 3}
    for secret in ("jo.smith", "7946", "123-4567", "10.0.0.12", "fe80", "sk-abcd", "AKIA", "mno12345"):
        assert secret not in out
    assert out.count("[PHONE]") == 2 and "[EMAIL]" in out and "[API_KEY]" in out
    harmless = ("Please use plan_experiment with learning_rate 1.5 and layers 52. On 2026-11-26 "
                "at 10:30 run version 3.11.4 with 100000 examples, ratio 0.5:0.5.")
    assert scrub_text(harmless, found) == harmless


def test_cleaning_counts_scrubs_and_drops_per_reason(tmp_path: Path):
    council = load_council(COUNCIL)
    plo = council.agent("plo")
    system = {"role": "system", "content": plo.system_prompt}

    def line(user, answer, **extra):
        return json.dumps({"messages": [system, {"role": "user", "content": user},
                                        {"role": "assistant", "content": answer}],
                           "category": "domain", **extra})
    good = [line(f"Question number {i} about the sector?", f"Answer {i} is fine.") for i in range(12)]
    lines = good + [
        line("Write to me at ann@corp.example please", "I will write to [you]."),
        line("My server is 192.168.1.20, call +1 415 555 0100", "Noted the host."),
        line("Think first", "<think>only reasoning, never an answer</think>"),
        line("Long one", "x " * 4000),
        line("Call it", '<tool_call>{"name": "scan_sector", "arguments": oops}</tool_call>'),
        line("Call it right", '<tool_call>{"name": "scan_sector", "arguments": {"sector": "rome"}}</tool_call>'),
        '{"messages": "not a list"}',
        json.dumps({"messages": [system, {"role": "user", "content": "no answer"}]}),
        json.dumps({"messages": [system, {"role": "user", "content": "x"},
                                 {"role": "assistant", "content": "y"}], "source": "scraped"}),
    ]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "plo.jsonl").write_text("\n".join(lines) + "\n")
    data = prepare(tmp_path / "s", COUNCIL, tmp_path / "data", include_synthetic=False,
                   max_chars=4000)
    m = data.manifest
    assert m["cleaning"]["scrubbed"] == {"email": 1, "ip": 1, "phone": 1}
    assert m["cleaning"]["examples_scrubbed"] == 2
    assert m["cleaning"]["dropped"] == {"empty": 1, "too_long": 1, "tool_call_json": 1}
    assert m["malformed"]["by_reason"]["bad_messages"] == 1
    assert m["malformed"]["by_reason"]["no_assistant"] == 1
    assert m["malformed"]["by_reason"]["bad_source"] == 1
    texts = " ".join(msg["content"] for s in ALL for r in rows(data, s) for msg in r["messages"])
    assert "ann@corp" not in texts and "192.168" not in texts and "[EMAIL]" in texts
    assert sum(len(rows(data, s)) for s in ALL) == 12 + 3


def test_openai_messages_format(tmp_path: Path):
    council = load_council(COUNCIL)
    q = council.agent("quigon")
    tool = q.tools[0]
    key = next(iter(tool.parameters["properties"]))
    lines = [
        {"messages": [{"role": "system", "content": [{"type": "text", "text": q.system_prompt}]},
                      {"role": "user", "content": [{"type": "text", "text": "Please run it "},
                                                   {"type": "text", "text": "for paris."}]},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "c1", "type": "function",
                           "function": {"name": tool.name, "arguments": json.dumps({key: "paris"})}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "done"},
                      {"role": "assistant", "content": "It is done."}],
         "category": "tool_calling", "id": "ignored-extra-key"},
        {"messages": [{"role": "user", "content": "Who are you?"},
                      {"role": "assistant", "content": "I am Qui-Gon."}]},
    ]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "quigon.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = prepare(tmp_path / "s", COUNCIL, tmp_path / "data", include_synthetic=False,
                   valid_fraction=0, test_fraction=0)
    got = {r["category"]: r for r in rows(data, "train") + rows(data, "unused")}
    call = got["tool_calling"]["messages"]
    assert call[0]["content"] == q.system_prompt and call[1]["content"] == "Please run it for paris."
    assert call[2]["content"] == f'<tool_call>{{"name": "{tool.name}", "arguments": {{"{key}": "paris"}}}}</tool_call>'
    assert [m["role"] for m in call] == ["system", "user", "assistant", "tool", "assistant"]
    assert got["unknown"]["agent"] == "quigon" and got["unknown"]["source"] == "real"


def test_vectorised_minhash_equals_datasketch():
    council = load_council(COUNCIL)
    from corpus.synthetic import synthetic_examples

    docs = synthetic_examples(council)[:25]
    vocab = Vocab()
    hashes, counts = ngrams(stream((example_words(d, vocab) for d in docs), min_len=3), 3)
    h32 = fold32(hashes)
    sigs = signatures(h32, counts, 128)
    start = 0
    for d, n in enumerate(counts):
        m = MinHash(num_perm=128, seed=1, scheme="affine32", hashfunc=int)
        m.update_batch(h32[start:start + n].tolist())
        assert np.array_equal(m.hashvalues, sigs[d]), d
        start += n
