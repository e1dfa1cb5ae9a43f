"""The corpus pipeline: mix, dedupe, splits, cache, errors, and mlx-lm reading its files."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.council import CATEGORIES, load_council
from common.errors import ConfigError
from corpus import PIPELINE_VERSION, latest, prepare
from corpus.__main__ import main as corpus_main
from corpus.clean import normalised_text
from corpus.synthetic import synthetic_examples
from demo.sessions import write_sessions

REPO = Path(__file__).resolve().parent.parent
COUNCIL = REPO / "council.yaml"
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Path:
    return write_sessions(load_council(COUNCIL), tmp_path_factory.mktemp("sessions"), seed=0)


def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def _copy_sessions(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.jsonl"):
        (dst / f.name).write_text(f.read_text())
    return dst


def test_prepare_writes_splits_and_manifest(sessions: Path, tmp_path: Path):
    data = prepare(sessions, COUNCIL, tmp_path / "data")
    assert data.dir == tmp_path / "data" / data.hash[:16]
    m = data.manifest
    assert m["pipeline_version"] == PIPELINE_VERSION and m["hash"] == data.hash
    assert m["mix_ratio"] == 0.5 and abs(m["mix"]["achieved"] - 0.5) < 0.02
    assert {e["file"] for e in m["inputs"]["sessions"]} == {f.name for f in sessions.glob("*.jsonl")}
    assert all(len(e["sha256"]) == 64 for e in m["inputs"]["sessions"])
    for split in (*SPLITS, "unused"):
        rows = _rows(data.dir, split)
        assert len(rows) == m["counts"][split]
        assert all(r["source"] in ("real", "synthetic") for r in rows)
        assert all(len(r["cluster"]) == 12 and "_keep" not in r for r in rows)
        assert all(r["method"] == "template" for r in rows if r["source"] == "synthetic")
    clusters = [{r["cluster"] for r in _rows(data.dir, s)} for s in SPLITS]
    assert not (clusters[0] & clusters[1] or clusters[0] & clusters[2] or clusters[1] & clusters[2])
    capped = sum(c["removed"] for c in m["balance"]["cuts"] if c["scope"] != "train")
    assert sum(m["counts"].values()) == m["duplicates"]["total"] - m["duplicates"]["removed"] - capped
    assert m["counts"]["train"] >= 100 and m["counts"]["valid"] >= 8
    council = load_council(COUNCIL)
    train = m["per_split"]["train"]
    for agent in council.names:
        assert set(train[agent]) == set(CATEGORIES)
    assert 0 < m["duplicates"]["rate"] < 1
    assert abs(sum(m["train_category_mix"].values()) - 1) < 1e-3


def test_mix_ratio_changes_train_and_hash_but_not_valid(sessions: Path, tmp_path: Path):
    low = prepare(sessions, COUNCIL, tmp_path, mix_ratio=0.2)
    high = prepare(sessions, COUNCIL, tmp_path, mix_ratio=0.8)
    assert low.hash != high.hash and low.dir != high.dir
    for data, ratio in ((low, 0.2), (high, 0.8)):
        rows = _rows(data.dir, "train")
        real = sum(r["source"] == "real" for r in rows) / len(rows)
        assert abs(real - ratio) < 0.02
        assert data.manifest["mix"]["achieved"] == pytest.approx(real, abs=1e-3)
    assert _rows(low.dir, "train") != _rows(high.dir, "train")
    # Splits are drawn before mixing: validation loss stays comparable across ratios.
    assert _rows(low.dir, "valid") == _rows(high.dir, "valid")


def test_duplicates_and_reasoning(sessions: Path, tmp_path: Path):
    src = _copy_sessions(sessions, tmp_path / "sessions")
    yoda = load_council(COUNCIL).agent("yoda")
    base = {"role": "system", "content": yoda.system_prompt}

    def row(user: str, answer: str) -> str:
        return json.dumps({"messages": [base, {"role": "user", "content": user},
                                        {"role": "assistant", "content": answer}],
                           "category": "domain"})
    extra = [row("What is the promotion margin?", "<think>hmm, Yoda knows</think>The promotion margin is two points."),
             row("what is the   PROMOTION margin?", "The promotion margin is two points."),
             row("Unique question one?", "<think>cut off reasoning"),
             row("Unique question two?", "Answer two.")] * 3
    (src / "extra.jsonl").write_text("\n".join(extra) + "\n")
    data = prepare(src, COUNCIL, tmp_path / "data", seed=1)
    seen: dict[str, str] = {}
    for split in SPLITS:
        for r in _rows(data.dir, split):
            key = normalised_text(r)
            assert key not in seen, f"duplicate left in {split} and {seen[key]}: {key[:60]}"
            seen[key] = split
            for m in r["messages"]:
                assert "<think>" not in m["content"]
    m = data.manifest
    assert m["cleaning"]["dropped"]["empty"] == 3 and m["cleaning"]["think_stripped"] == 6
    dup = m["duplicates"]
    # 9 repeats of the 3 answerable rows are exact; the 3 case-folded ones exact too.
    assert dup["by_source"]["real"]["exact"] >= 8
    assert dup["removed"] == dup["exact"] + dup["near"]
    assert dup["rate"] == pytest.approx(dup["removed"] / dup["total"], abs=1e-4)


def test_a_bad_line_is_dropped_and_counted_a_bad_file_is_an_error(sessions: Path, tmp_path: Path):
    src = _copy_sessions(sessions, tmp_path / "sessions")
    good = (src / "yoda.jsonl").read_text().splitlines()
    (src / "yoda.jsonl").write_text("\n".join(good[:2] + ['{"messages": [oops'] + good[2:]) + "\n")
    data = prepare(src, COUNCIL, tmp_path / "data")
    malformed = data.manifest["malformed"]
    assert malformed["by_reason"]["invalid_json"] == 1
    assert malformed["lines"][0].startswith("yoda.jsonl:3: invalid JSON")
    entry = next(e for e in data.manifest["inputs"]["sessions"] if e["file"] == "yoda.jsonl")
    assert entry["malformed"] == 1 and entry["examples"] == len(good)
    # Mostly broken: a wrong export, refused with the file and its first bad line.
    (src / "yoda.jsonl").write_text("\n".join(good[:2] + ['{"messages": [oops'] * 3) + "\n")
    with pytest.raises(ConfigError) as err:
        prepare(src, COUNCIL, tmp_path / "data2")
    assert "yoda.jsonl" in str(err.value) and "line 3" in str(err.value)
    assert not list((tmp_path / "data2").glob("*/manifest.json"))


def test_invalid_messages_and_category_are_config_errors(tmp_path: Path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(ConfigError, match="line 1"):
        prepare(src, COUNCIL, tmp_path / "data")
    msg = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    (src / "a.jsonl").write_text(json.dumps({"messages": msg, "category": "gossip"}) + "\n")
    with pytest.raises(ConfigError, match="category"):
        prepare(src, COUNCIL, tmp_path / "data")


def test_cache_reuse_and_latest(sessions: Path, tmp_path: Path):
    out = tmp_path / "data"
    assert latest(out) is None
    first = prepare(sessions, COUNCIL, out, mix_ratio=0.4)
    stamp = (first.dir / "manifest.json").stat().st_mtime_ns
    again = prepare(sessions, COUNCIL, out, mix_ratio=0.4)
    assert again.dir == first.dir and again.hash == first.hash
    assert (first.dir / "manifest.json").stat().st_mtime_ns == stamp
    assert latest(out).hash == first.hash
    src = _copy_sessions(sessions, tmp_path / "changed")
    with open(src / "plo.jsonl", "a") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": "New?"},
                                          {"role": "assistant", "content": "Yes."}]}) + "\n")
    changed = prepare(src, COUNCIL, out, mix_ratio=0.4)
    assert changed.hash != first.hash
    assert latest(out).hash == changed.hash
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_empty_corpus_and_bad_settings(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="empty corpus"):
        prepare(empty, COUNCIL, tmp_path / "data", include_synthetic=False)
    with pytest.raises(ConfigError, match="mix_ratio"):
        prepare(empty, COUNCIL, tmp_path / "data", mix_ratio=0.95)
    with pytest.raises(ConfigError, match="not found"):
        prepare(tmp_path / "missing", COUNCIL, tmp_path / "data")
    # Synthetic data alone still makes a corpus (a fresh install with no sessions yet).
    alone = prepare(empty, COUNCIL, tmp_path / "data")
    assert alone.manifest["raw"]["real"] == 0 and alone.manifest["counts"]["train"] > 0


def test_synthetic_covers_every_agent_and_category():
    council = load_council(COUNCIL)
    rows = synthetic_examples(council, seed=0)
    cells = {(r["agent"], r["category"]) for r in rows}
    assert cells == {(a, c) for a in council.names for c in CATEGORIES}
    assert all(r["source"] == "synthetic" for r in rows)
    assert synthetic_examples(council, seed=0) == rows


def test_mlx_lm_reads_the_files(sessions: Path, tmp_path: Path, demo_assets):
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import iterate_batches

    data = prepare(sessions, COUNCIL, tmp_path / "data")
    tok = load_tokenizer(demo_assets.model_dir)
    config = SimpleNamespace(mask_prompt=True)
    train, valid, test = load_local_dataset(data.dir, tok, config)
    assert len(train) == data.manifest["counts"]["train"] and len(valid) >= 8 and len(test) > 0
    tokens, offset = train.process(train[0])
    assert 0 < offset < len(tokens) and tokens[-2] == tok.convert_tokens_to_ids("<|im_end|>")
    batch, lengths = next(iterate_batches(CacheDataset(train), batch_size=4, max_seq_length=128))
    assert batch.shape[0] == 4


def test_cli_prints_table_and_exit_codes(sessions: Path, tmp_path: Path, capsys):
    rc = corpus_main(["--sessions", str(sessions), "--council", str(COUNCIL),
                      "--out", str(tmp_path / "data"), "--mix-ratio", "0.5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "train real" in out and "duplicates removed" in out and "jailbreak" in out
    rc = corpus_main(["--sessions", str(sessions), "--council", str(COUNCIL),
                      "--out", str(tmp_path / "data"), "--mix-ratio", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "mix_ratio" in err and len(err.strip().splitlines()) == 1
