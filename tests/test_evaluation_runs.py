"""Reproducible and robust eval runs: --check-determinism, a budget that stops a run
(exit 3, partial results kept) and --resume that finishes it with the scores an
uninterrupted run gets, the journal's crash safety, and the exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ConfigError
from evaluation.harness import compare_runs
from evaluation.results import read_eval_results
from evaluation.resume import Budget, Journal, Unit, run_units
from test_evaluation import COUNCIL

# 28 choice + 7 generation cases: both code paths, small enough to run three times
SUBSET = ["--categories", "jailbreak", "--splits", "dev", "--max-tokens", "8", "--no-progress"]


def cli(demo_assets, *extra: str) -> int:
    from evaluation.__main__ import main

    return main(["--model", str(demo_assets.model_dir), "--council", str(COUNCIL), *SUBSET, *extra])


@pytest.fixture(scope="module")
def reference(demo_assets, tmp_path_factory):
    """--check-determinism on the subset: two runs, identical; the first one written."""
    out = tmp_path_factory.mktemp("det") / "eval_results.json"
    assert cli(demo_assets, "--check-determinism", "--out", str(out)) == 0
    return read_eval_results(out)


@pytest.mark.slow
def test_check_determinism_passes_on_the_demo_model(reference):
    assert reference["n_cases"] == 35 and reference["complete"]
    assert {c["method"] for c in reference["cases"]} == {"loglik", "generate"}


@pytest.mark.slow
def test_budget_stops_and_resume_matches_an_uninterrupted_run(demo_assets, reference, tmp_path, capsys):
    out = tmp_path / "eval_results.json"
    journal = Path(f"{out}.partial.jsonl")
    assert cli(demo_assets, "--out", str(out), "--max-tokens-total", "800") == 3
    err = capsys.readouterr().err
    assert "budget exceeded: token budget spent" in err and "--resume" in err
    assert not out.exists() and journal.exists()
    lines = journal.read_text().splitlines()
    done = {r["id"] for line in lines[1:] for r in json.loads(line)}
    assert 0 < len(done) < 35  # stopped part-way, at a batch boundary
    # a resume under other settings would mix two runs: refused, the journal left alone
    assert cli(demo_assets, "--out", str(out), "--resume", "--seed", "1") == 2
    assert "fingerprint.seed" in capsys.readouterr().err and journal.read_text().splitlines() == lines
    assert cli(demo_assets, "--out", str(out), "--resume") == 0
    assert not journal.exists()
    final = read_eval_results(out)
    assert compare_runs(final, reference) == []  # bit-identical to the uninterrupted run
    assert final["n_cases"] == 35 and final["complete"]


@pytest.mark.slow
def test_time_budget_and_bad_settings_exit_codes(demo_assets, tmp_path, capsys):
    assert cli(demo_assets, "--out", str(tmp_path / "r.json"), "--budget-s", "0.001") == 3
    assert "time budget spent" in capsys.readouterr().err
    assert cli(demo_assets, "--out", str(tmp_path / "r.json"), "--top-p", "0") == 2
    assert "top_p" in capsys.readouterr().err
    assert cli(demo_assets, "--out", str(tmp_path / "r.json"), "--categories", "poetry") == 2


def test_compare_runs_reports_every_difference():
    case = {"id": "a", "score": 0.5, "label": "WRONG", "output": "x"}
    first = {"cases": [case, {**case, "id": "b"}], "skipped": []}
    assert compare_runs(first, first) == []
    second = {"cases": [case, {**case, "id": "b", "output": "y"}, {**case, "id": "c"}], "skipped": []}
    assert [m["id"] for m in compare_runs(first, second)] == ["b", "c"]


# ---------------------------------------------------------------- journal and budget (no model)

def _unit(ids: list[str], tokens: int = 10, calls: list | None = None) -> Unit:
    def run():
        if calls is not None:
            calls.append(ids)
        return [{"id": i, "score": 1.0, "tokens": {"prompt": tokens, "completion": 0}} for i in ids]
    return Unit(ids, run)


def test_journal_survives_a_torn_write_and_skips_done_units(tmp_path):
    path = tmp_path / "r.json.partial.jsonl"
    fp = {"runner": "local", "seed": 0}
    j = Journal(path, fp, resume=False)
    records, why = run_units([_unit(["a", "b"]), _unit(["c"])], j, Budget())
    assert why is None and set(records) == {"a", "b", "c"}
    with open(path, "ab") as fh:  # a crash in the middle of the next line
        fh.write(b'[{"id":"d","sco')
    j2 = Journal(path, fp, resume=True)
    assert set(j2.done()) == {"a", "b", "c"}
    calls: list = []
    records, why = run_units([_unit(["a", "b"], calls=calls), _unit(["c"], calls=calls), _unit(["d"], calls=calls)],
                             j2, Budget())
    assert calls == [["d"]] and set(records) == {"a", "b", "c", "d"}
    assert set(Journal(path, fp, resume=True).done()) == {"a", "b", "c", "d"}  # the torn tail was dropped
    with pytest.raises(ConfigError) as err:
        Journal(path, {**fp, "seed": 1}, resume=True)
    assert err.value.key == "fingerprint.seed"
    assert set(Journal(path, {**fp, "seed": 1}, resume=False).done()) == set()  # without resume: start over


def test_budget_is_checked_between_units():
    calls: list = []
    units = [_unit(["a"], 60, calls), _unit(["b"], 60, calls), _unit(["c"], 60, calls)]
    records, why = run_units(units, None, Budget(tokens=100))
    assert calls == [["a"], ["b"]] and set(records) == {"a", "b"} and "120 of 100 tokens" in why
    records, why = run_units(units[:1], None, Budget(seconds=0.0))
    assert records == {} and why.startswith("time budget spent")
    records, why = run_units(units[:2], None, Budget(tokens=60))
    assert why is not None and set(records) == {"a"}
    records, why = run_units(units[:1], None, Budget(tokens=10))  # the last unit may end past it: complete
    assert why is None and set(records) == {"a"}


def test_smoke_pick_is_seeded_and_covers_both_paths():
    from common.council import CATEGORIES, load_council
    from evaluation.suite import DEFAULT_SUITE_DIR, load_suite, smoke_cases

    cases = load_suite(DEFAULT_SUITE_DIR, load_council(COUNCIL))
    picks = {seed: [c.id for c in smoke_cases(cases, seed)] for seed in range(6)}
    for seed, ids in picks.items():
        chosen = [c for c in cases if c.id in ids]
        assert sorted(c.category for c in chosen) == sorted(CATEGORIES) and {c.split for c in chosen} == {"dev"}
        assert {c.needs for c in chosen} == {"choice", "generate"}
        assert [c.id for c in smoke_cases(cases, seed)] == ids
    assert len({tuple(v) for v in picks.values()}) > 1


@pytest.mark.slow
def test_seed_drives_sampling(demo_assets, tmp_path):
    """With temperature > 0 the seed decides the replies: same seed, same replies."""
    import yaml

    from evaluation import EvalConfig, run_eval
    from evaluation.harness import load_model
    from evaluation.suite import DEFAULT_SUITE_DIR

    real = {c["id"]: c for f in sorted(DEFAULT_SUITE_DIR.glob("*.yaml"))
            for c in yaml.safe_load(f.read_text())["cases"]}
    ids = ["yoda-identity-05", "yoda-jailbreak-05", "yoda-tool-calling-05", "windu-identity-05"]
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump({"cases": [real[i] for i in ids]}))

    pair = load_model(EvalConfig(model=str(demo_assets.model_dir)))

    def outputs(seed: int) -> list[str]:
        cfg = EvalConfig(model=str(demo_assets.model_dir), council_path=str(COUNCIL), suite_dir=str(tmp_path),
                         min_dev_per_cell=0, min_holdout_per_cell=0, temperature=1.0, max_tokens=8, seed=seed)
        res = run_eval(cfg, progress=False, loaded=pair)
        assert res["repro"]["seed"] == seed and res["repro"]["temperature"] == 1.0
        return [c["output"] for c in res["cases"]]

    first = outputs(5)
    assert outputs(5) == first
    assert outputs(6) != first
