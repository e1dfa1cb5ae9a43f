"""python -m evaluation.diff: per-case regressions and improvements between two real eval files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ConfigError
from evaluation.diff import diff_results, main, render
from evaluation.results import build_results, write_eval_results

ROOT = Path(__file__).resolve().parents[1]


def rows(scores: dict[str, float], labels: dict[str, str] | None = None) -> list[dict]:
    """Cases named agent.category.n[.h]; a trailing .h puts a case in the holdout split."""
    out = []
    for cid, s in scores.items():
        agent, cat = cid.split(".")[:2]
        out.append({"id": cid, "agent": agent, "category": cat, "split": "holdout" if cid.endswith(".h") else "dev",
                    "score": s, "label": (labels or {}).get(cid, "CORRECT" if s == 1 else "WRONG"),
                    "latency_ms": 1.0, "output": "", "explanation": ""})
    return out


BASE = {"yoda.jailbreak.1": 1.0, "yoda.jailbreak.2": 1.0, "yoda.domain.1": 0.5, "windu.identity.1": 0.0,
        "windu.identity.2": 0.4, "cilghal.isolation.1": 0.7, "cilghal.isolation.2": 0.7, "windu.domain.1.h": 1.0,
        "yoda.domain.2": 0.3, "yoda.domain.3": 0.3}
CAND = {**BASE, "yoda.jailbreak.1": 0.0, "yoda.domain.1": 0.45, "windu.identity.1": 1.0, "windu.identity.2": 0.9,
        "windu.domain.1.h": 0.0}


def write(tmp_path: Path, name: str, scores: dict[str, float], labels=None) -> Path:
    path = tmp_path / name / "eval_results.json"
    path.parent.mkdir()
    write_eval_results(path, build_results(rows(scores, labels), ["yoda", "windu", "cilghal"], {}, 1.0))
    return path


@pytest.fixture
def files(tmp_path):
    return (write(tmp_path, "base", BASE),
            write(tmp_path, "cand", CAND, {"yoda.jailbreak.1": "COMPLIED"}))


def test_lists_regressions_and_improvements_grouped(files, capsys):
    assert main([str(files[0]), str(files[1])]) == 1
    out = capsys.readouterr().out
    assert out.startswith("10 paired cases (all), mean delta -0.0550, threshold 0")
    reg = out[out.index("regressed: 3 cases"):out.index("improved:")]
    assert "yoda / jailbreak: 1, mean -1.000" in reg
    assert "yoda.jailbreak.1 [dev]  1.000 -> 0.000  (-1.000)  CORRECT -> COMPLIED" in reg
    assert "yoda / domain: 1, mean -0.050" in reg
    assert "windu / domain: 1" in reg and "[holdout]" in reg
    imp = out[out.index("improved: 2 cases"):]
    assert "windu / identity: 2, mean +0.750" in imp
    assert imp.index("windu.identity.1") < imp.index("windu.identity.2")   # biggest gain first
    assert "cilghal" not in out                                            # unchanged: not listed


def test_min_delta_and_split(files, capsys):
    assert main([str(files[0]), str(files[1]), "--min-delta", "0.05"]) == 1   # -1.0 still beyond
    out = capsys.readouterr().out
    assert "yoda.domain.1" not in out and "regressed: 2 cases" in out
    assert main([str(files[0]), str(files[1]), "--min-delta", "1.0"]) == 0    # nothing beyond 1.0
    capsys.readouterr()
    assert main([str(files[0]), str(files[1]), "--split", "holdout", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["n_paired"] == 1 and [r["id"] for r in data["regressed"]] == ["windu.domain.1.h"]
    assert data["regressed"][0]["delta"] == -1.0 and data["improved"] == []


def test_no_regression_exits_zero(tmp_path, capsys):
    a = write(tmp_path, "a", BASE)
    b = write(tmp_path, "b", {**BASE, "yoda.domain.2": 0.9})
    assert main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "regressed: 0 cases" in out and "improved: 1 case\n" in out


def test_different_rubrics_refused_with_exit_2(tmp_path, capsys):
    a = write(tmp_path, "a", BASE)
    b = write(tmp_path, "b", {k.replace("yoda", "ahsoka"): v for k, v in BASE.items()})
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not scored on the same rubric" in err and err.count("\n") == 1


def test_one_missing_case_is_tolerated_and_reported(tmp_path):
    scores = {f"yoda.domain.{i}": 0.5 for i in range(10)}
    a = diff_results({"cases": rows(scores)}, {"cases": rows({k: v for k, v in scores.items() if k != "yoda.domain.0"})})
    assert a.n_paired == 9 and a.only_base == ["yoda.domain.0"] and not a.regressed
    assert "unpaired: 1 only in the baseline, 0 only in the candidate" in render(a)


def test_bad_inputs(tmp_path, files, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text(files[1].read_text())
    (tmp_path / "broken.json.sha256").write_text("0" * 64 + "  broken.json\n")
    assert main([str(files[0]), str(broken)]) == 2
    assert "does not match its trailer" in capsys.readouterr().err
    assert main([str(files[0]), str(tmp_path / "nope.json")]) == 2
    assert main([str(files[0]), str(files[1]), "--min-delta", "-0.1"]) == 2
    with pytest.raises(ConfigError):
        diff_results({"cases": [{"id": "a", "score": "x", "split": "dev"}]}, {"cases": []})
    with pytest.raises(ConfigError):
        diff_results({"cases": [{"id": "a", "score": 1, "split": "dev"}] * 2}, {"cases": []})


def test_cli_runs_without_mlx(files):
    # The diff reads JSON only: it must not pay for (or need) mlx.
    code = ("import sys, runpy; sys.argv = ['x'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('evaluation.diff', run_name='__main__')\n"
            "except SystemExit as e:\n    print('mlx' in sys.modules, e.code)\n")
    out = subprocess.run([sys.executable, "-c", code, str(files[0]), str(files[1])], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("False 1"), out.stdout + out.stderr
