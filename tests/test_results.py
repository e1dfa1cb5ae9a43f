"""results.tsv exported from real Optuna studies (SQLite), read back with pandas."""
from __future__ import annotations

import csv
import json

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from study.results import HEADER, export_results, trial_row

optuna.logging.set_verbosity(optuna.logging.WARNING)


def suggest(trial):
    return {
        "lora_rank": trial.suggest_int("lora_rank", 8, 64),
        "learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.15),
    }


def finish(study, attrs, state=TrialState.COMPLETE, value=None):
    trial = study.ask()
    suggest(trial)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return trial.number


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    # Module-scoped: creating a SQLite study costs seconds here, and no test changes them.
    storage = f"sqlite:///{tmp_path_factory.mktemp('db') / 'study.db'}"
    proxy = optuna.create_study(storage=storage, study_name="council-proxy", direction="maximize")
    full = optuna.create_study(storage=storage, study_name="council-full", direction="maximize")
    common = {"mode": "proxy", "model": "tiny-demo"}
    finish(proxy, {**common, "experiment_id": "exp-002", "timestamp": "2026-03-20T02:40:00+01:00",
                   "score": 0.6123456789012345, "baseline": 0.588, "result": "kept",
                   "train_loss": 0.81, "val_loss": 0.84, "elapsed_s": 910.5, "holdout_score": 0.5871428571428572},
           value=0.6123456789012345)
    finish(proxy, {**common, "experiment_id": "exp-003", "timestamp": "2026-03-20T03:10:00+01:00",
                   "result": "veto_jailbreak", "train_loss": 1.2}, state=TrialState.PRUNED)
    finish(proxy, {**common, "experiment_id": "exp-004", "timestamp": "2026-03-20T03:30:00+01:00",
                   "fail_reason": "oom"}, state=TrialState.FAIL)
    finish(proxy, {**common, "experiment_id": "exp-005", "timestamp": "2026-03-20T03:50:00+01:00"},
           state=TrialState.FAIL)
    finish(proxy, {**common, "experiment_id": "exp-006", "timestamp": "2026-03-20T04:10:00+01:00"},
           state=TrialState.PRUNED)
    running = proxy.ask()           # still RUNNING: not exported
    suggest(running)
    proxy.enqueue_trial({"lora_rank": 32, "learning_rate": 5e-6, "dropout": 0.05})   # WAITING
    finish(full, {"mode": "full", "model": "35B", "experiment_id": "exp-001",
                  "timestamp": "2026-03-20T02:05:00+01:00", "score": 0.813, "baseline": 0.778,
                  "result": "kept\tnoted\n", "elapsed_s": 1740}, value=0.813)
    return [proxy, full]


def test_export_round_trip(studies, tmp_path):
    path = tmp_path / "results.tsv"
    n = export_results(studies, path)
    assert n == 6
    df = pd.read_csv(path, sep="\t")
    assert list(df.columns) == HEADER
    assert len(df) == 6
    # sorted by timestamp: the full-mode study's earlier trial comes first (modes merge)
    assert list(df["experiment_id"]) == ["exp-001", "exp-002", "exp-003", "exp-004", "exp-005", "exp-006"]
    assert list(df["mode"]) == ["full"] + ["proxy"] * 5
    assert list(df["result"]) == ["kept noted", "kept", "veto_jailbreak", "failed:oom", "failed:crashed", "pruned"]
    kept = df.iloc[1]
    assert kept["score"] == 0.6123456789012345          # exact float round-trip
    assert kept["baseline"] == 0.588 and kept["elapsed_s"] == 910.5
    assert kept["train_loss"] == 0.81 and kept["val_loss"] == 0.84
    assert pd.isna(df.iloc[3]["score"])
    params = {t.user_attrs["experiment_id"]: t.params for s in studies for t in s.get_trials()
              if "experiment_id" in t.user_attrs}
    for _, row in df.iterrows():
        assert json.loads(row["config"]) == params[row["experiment_id"]]
    assert '"' in df.iloc[0]["config"] and " " not in df.iloc[0]["config"]   # compact JSON


def test_plain_tsv_readable_without_quoting(studies, tmp_path):
    path = tmp_path / "results.tsv"
    export_results(studies, path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows[0] == HEADER
    assert all(len(r) == len(HEADER) for r in rows)
    assert json.loads(rows[1][HEADER.index("config")])["lora_rank"] >= 8


def test_trial_row_states(studies):
    proxy = studies[0]
    by_state = {}
    for t in proxy.get_trials():
        by_state.setdefault(t.state, []).append(trial_row(t, proxy.study_name))
    assert by_state[TrialState.RUNNING] == [None]
    assert by_state[TrialState.WAITING] == [None]
    fail = by_state[TrialState.FAIL][0]
    assert fail["result"] == "failed:oom" and fail["experiment_id"] == "exp-004"
    assert fail["config"] == json.dumps(json.loads(fail["config"]), sort_keys=True, separators=(",", ":"))


def test_fallbacks_for_a_trial_without_attrs(tmp_path):
    study = optuna.create_study(direction="maximize", study_name="bare")
    finish(study, {}, value=0.5)
    row = trial_row(study.get_trials()[0], "bare")
    assert row["experiment_id"] == "bare-0"
    assert row["score"] == 0.5 and row["result"] == ""
    assert row["timestamp"][:2] == "20"


def test_rewrite_is_atomic_and_leaves_no_temp_files(studies, tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("old\n")
    export_results(studies, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.tsv"]
    assert path.read_text().startswith("experiment_id\t")

    class Broken:
        study_name = "broken"

        def get_trials(self, deepcopy=False):
            raise RuntimeError("storage went away")

    before = path.read_text()
    with pytest.raises(RuntimeError):
        export_results([studies[0], Broken()], path)
    assert path.read_text() == before       # the old complete file survives a failed export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.tsv"]


def test_empty_study_writes_header_only(tmp_path):
    path = tmp_path / "r.tsv"
    assert export_results([optuna.create_study()], path) == 0
    df = pd.read_csv(path, sep="\t")
    assert list(df.columns) == HEADER and len(df) == 0


DESIGN_COLUMNS = ["experiment_id", "timestamp", "mode", "model", "score", "baseline", "result",
                  "train_loss", "val_loss", "elapsed_s", "config"]


def test_holdout_score_is_appended_after_config(studies, tmp_path):
    # The DESIGN's eleven columns keep their positions; the held-out score comes last.
    assert HEADER == DESIGN_COLUMNS + ["holdout_score"]
    path = tmp_path / "results.tsv"
    export_results(studies, path)
    df = pd.read_csv(path, sep="\t")
    by_id = df.set_index("experiment_id")
    assert by_id.loc["exp-002", "holdout_score"] == 0.5871428571428572     # exact round-trip
    assert by_id["holdout_score"].drop("exp-002").isna().all()             # unset: empty cell
    with open(path) as fh:
        lines = fh.read().splitlines()
    cells = lines[2].split("\t")                                           # exp-002's row
    assert cells[DESIGN_COLUMNS.index("config")].startswith("{") and cells[-1] == "0.5871428571428572"


class Counting:
    """A real study whose get_trials calls are counted: the per-trial export must not read
    the whole history."""

    def __init__(self, study):
        self.study, self.study_name, self.reads = study, study.study_name, 0

    def get_trials(self, *a, **kw):
        self.reads += 1
        return self.study.get_trials(*a, **kw)


def test_export_trial_merges_one_row_and_matches_the_full_export(studies, tmp_path):
    path, full = tmp_path / "results.tsv", tmp_path / "full.tsv"
    storage = f"sqlite:///{tmp_path / 'night.db'}"
    night = optuna.create_study(storage=storage, study_name="council-proxy-night", direction="maximize")
    finish(night, {"experiment_id": "exp-010", "timestamp": "2026-03-20T03:20:00+01:00", "result": "kept"}, value=0.7)
    export_results([*studies, night], path)
    finish(night, {"experiment_id": "exp-011", "timestamp": "2026-03-20T02:30:00+01:00", "result": "discard",
                   "reasons": ["a\ttab"]}, value=0.6)
    counted = [Counting(s) for s in (*studies, night)]
    assert export_results_and_trial(counted, night, path) == 8
    assert all(c.reads == 0 for c in counted)        # only the new trial was read
    export_results([*studies, night], full)
    assert path.read_text() == full.read_text()      # same rows, same order, same cells
    # The same trial again (e.g. its attrs changed): its row is replaced, not duplicated.
    night.set_user_attr("unrelated", 1)
    assert export_results_and_trial(counted, night, path) == 8
    assert path.read_text() == full.read_text()


def export_results_and_trial(counted, night, path):
    from study.results import export_trial
    return export_trial(counted, night, night.get_trials()[-1], path)


def test_export_trial_rebuilds_a_missing_or_foreign_file(studies, tmp_path):
    from study.results import export_trial
    path, full = tmp_path / "results.tsv", tmp_path / "full.tsv"
    export_results(studies, full)
    last = [t for t in studies[0].get_trials() if t.state.is_finished()][-1]
    for content in (None, "a\tb\n", "", full.read_text().replace("\tholdout_score", "")):
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(content)
        assert export_trial(studies, studies[0], last, path) == 6
        assert path.read_text() == full.read_text()
