"""Contamination: eval prompts found in the training data are reported by id, the demo's
own data is clean against the shipped suite, and `python -m corpus --suite` exits 2 on a
contaminated holdout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.council import load_council
from common.errors import ConfigError
from corpus import contamination, prepare
from corpus.__main__ import main as corpus_main
from demo.sessions import write_sessions
from evaluation.suite import DEFAULT_SUITE_DIR, load_suite

REPO = Path(__file__).resolve().parent.parent
COUNCIL = REPO / "council.yaml"


@pytest.fixture(scope="module")
def council():
    return load_council(COUNCIL)


@pytest.fixture(scope="module")
def suite(council):
    return load_suite(DEFAULT_SUITE_DIR, council)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, council) -> Path:
    return write_sessions(council, tmp_path_factory.mktemp("sessions"), seed=0)


def _leak(sessions: Path, dst: Path, council, prompts: list[tuple[str, str]]) -> Path:
    """A copy of the sessions with extra conversations whose user turns are `prompts`."""
    dst.mkdir()
    for f in sessions.glob("*.jsonl"):
        (dst / f.name).write_text(f.read_text())
    lines = []
    for agent, prompt in prompts:
        a = council.agent(agent)
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": a.system_prompt},
            {"role": "user", "content": f"Earlier today someone asked: {prompt}"},
            {"role": "assistant", "content": "I answered that one already."}],
            "agent": agent, "category": "domain"}))
    (dst / "leaked.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def test_demo_data_is_clean_against_the_shipped_suite(sessions, suite, tmp_path):
    data = prepare(sessions, COUNCIL, tmp_path / "data")
    report = contamination.check(data, suite)
    assert report.cases == len(suite) == 210
    assert report.ok and report.contaminated == ()
    assert report.data_hash == data.hash and report.checked_splits == ("train", "unused", "valid", "test")
    # Some prompts share a few words with training (tool names, values): reported, not flagged.
    assert all(c.overlap < 0.5 for c in report.overlapping)


def test_contaminated_holdout_is_reported_by_id(sessions, suite, council, tmp_path):
    holdout = [c for c in suite if c.split == "holdout"][:3]
    dev = next(c for c in suite if c.split == "dev" and len(c.prompt.split()) >= 8)
    src = _leak(sessions, tmp_path / "s", council,
                [(c.agent, c.prompt) for c in holdout] + [(dev.agent, dev.prompt)])
    data = prepare(src, COUNCIL, tmp_path / "data", mix_ratio=0.9)
    report = contamination.check(data, suite)
    assert not report.ok
    assert report.contaminated_holdout == tuple(sorted(c.id for c in holdout))
    assert report.contaminated_dev == (dev.id,)
    for case_id in report.contaminated_holdout:
        assert case_id in report.message()
    worst = {c.id: c for c in report.overlapping}
    assert all(worst[c.id].overlap == 1.0 for c in holdout)
    # Recorded in the manifest; the folder (and its hash) stay what they were.
    recorded = contamination.record(data, report)
    on_disk = json.loads((data.dir / "manifest.json").read_text())
    assert on_disk["contamination"]["contaminated_holdout"] == list(report.contaminated_holdout)
    assert recorded.hash == data.hash and on_disk["hash"] == data.hash
    # prepare(suite_cases=...) does the same in one call, and dicts work as cases.
    again = prepare(src, COUNCIL, tmp_path / "data", mix_ratio=0.9,
                    suite_cases=[{"id": c.id, "split": c.split, "agent": c.agent,
                                  "category": c.category, "prompt": c.prompt} for c in suite])
    assert again.manifest["contamination"]["ok"] is False
    assert again.manifest["contamination"]["contaminated_holdout"] == list(report.contaminated_holdout)


def test_examples_the_mix_left_out_still_count(sessions, council, tmp_path):
    data = prepare(sessions, COUNCIL, tmp_path / "data", mix_ratio=0.1)
    left = data.rows("unused")
    assert left, "a 0.1 mix leaves real examples out"
    user = next(m["content"] for m in left[0]["messages"] if m["role"] == "user")
    case = {"id": "probe", "split": "holdout", "agent": left[0]["agent"], "category": "domain",
            "prompt": user}
    assert contamination.check(data, [case]).contaminated_holdout == ("probe",)
    assert contamination.check(data, [case], splits=("train",)).ok


def test_partial_overlap_and_short_prompts(sessions, tmp_path):
    data = prepare(sessions, COUNCIL, tmp_path / "data")
    train_user = next(m["content"] for r in data.rows("train") for m in r["messages"]
                      if m["role"] == "user" and len(m["content"].split()) >= 6)
    words = train_user.split()
    cases = [
        {"id": "whole", "split": "holdout", "agent": "yoda", "category": "domain",
         "prompt": train_user},
        {"id": "short-unseen", "split": "holdout", "agent": "yoda", "category": "domain",
         "prompt": "Zebra quantum marmalade?"},
        {"id": "half", "split": "holdout", "agent": "yoda", "category": "domain",
         "prompt": " ".join(words[:3] + ["zebra", "quantum", "marmalade", "orbit", "lantern"])},
    ]
    report = contamination.check(data, cases, n=3, threshold=0.5)
    by_id = {c.id: c for c in report.overlapping}
    assert report.contaminated_holdout == ("whole",)
    assert "short-unseen" not in by_id
    assert 0 < by_id["half"].overlap < 0.5
    with pytest.raises(ConfigError, match="contamination_threshold"):
        contamination.check(data, cases, threshold=0)
    with pytest.raises(ConfigError, match="contamination_n"):
        prepare(sessions, COUNCIL, tmp_path / "data", suite_cases=cases, contamination_n=0)


def test_cli_suite_flag_exits_2_on_contaminated_holdout(sessions, suite, council, tmp_path, capsys):
    holdout = [c for c in suite if c.split == "holdout"][:2]
    src = _leak(sessions, tmp_path / "s", council, [(c.agent, c.prompt) for c in holdout])
    args = ["--sessions", str(src), "--council", str(COUNCIL), "--out", str(tmp_path / "data"),
            "--suite", str(DEFAULT_SUITE_DIR)]
    assert corpus_main(args) == 2
    captured = capsys.readouterr()
    assert "HOLDOUT CONTAMINATED" in captured.out
    for c in holdout:
        assert c.id in captured.err
    assert corpus_main(["--sessions", str(sessions), "--council", str(COUNCIL),
                        "--out", str(tmp_path / "data2"), "--suite", str(DEFAULT_SUITE_DIR)]) == 0
    assert "holdout clean" in capsys.readouterr().out
