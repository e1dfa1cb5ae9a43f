"""Malformed input, through the real command lines: every row ends with exit code 2, ONE line
on stderr naming the file and the key or value at fault, and the workdir exactly as it was
(no lock file, no data folder, no journal, no database).

Most rows run `python -m study.nightly --demo`; rows about the model, the sessions and the
corpus run a real (non-demo) night on the demo model; the eval suite is not configurable in
autoresearch.toml (the night always uses evaluation/suite), so its rows and the corrupt
adapter run `python -m evaluation`; the promotion history row runs `python -m study.promote`.

`--dry-run` runs every check the night runs before its first trial (study/preflight.py), so
for every row the dry run and the real night end alike: the same exit code and line. The
eval and promote rows are put before a night too: the bad suite as the suite the night
reads, the bad weights as the promoted adapter.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from night_fixtures import link_demo_cache, make_workdir

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_S = float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20"))


@dataclass(frozen=True)
class Row:
    id: str
    mutate: Callable[[Path, object], None]    # (workdir, demo assets)
    expect: tuple[str, ...]                   # substrings of the error line ({wd} = the workdir)
    command: str = "night"                    # night | real-night | eval | promote
    args: tuple[str, ...] = ()


# --- mutations ----------------------------------------------------------------------------

def edit(name: str, old: str, new: str) -> Callable[[Path, object], None]:
    def mutate(wd: Path, assets) -> None:
        path = wd / name
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new, 1))
    return mutate


def append(name: str, extra: str) -> Callable[[Path, object], None]:
    return lambda wd, assets: (wd / name).write_text((wd / name).read_text() + extra)


def both(*fs: Callable[[Path, object], None]) -> Callable[[Path, object], None]:
    def mutate(wd: Path, assets) -> None:
        for f in fs:
            f(wd, assets)
    return mutate


def real_night(model: str | None = None, sessions: str = "sessions") -> Callable[[Path, object], None]:
    """A non-demo config on the demo model (or `model`), reading sessions from `sessions`."""
    def mutate(wd: Path, assets) -> None:
        edit("autoresearch.toml", 'model = "~/models/Qwen3.5-9B-4bit"', f'model = "{model or assets.model_dir}"')(wd, assets)
        edit("autoresearch.toml", 'default = "auto"', 'default = "proxy"')(wd, assets)
        edit("autoresearch.toml", 'sessions = "sessions"', f'sessions = "{sessions}"')(wd, assets)
    return mutate


def sessions_folder(lines: list[str] | None, good: int = 2) -> Callable[[Path, object], None]:
    """wd/sess with yoda.jsonl: `good` lines from the demo's sessions, then `lines`;
    None: an empty folder."""
    def mutate(wd: Path, assets) -> None:
        folder = wd / "sess"
        folder.mkdir()
        if lines is not None:
            kept = (Path(assets.sessions_dir) / "yoda.jsonl").read_text().splitlines()[:good]
            (folder / "yoda.jsonl").write_text("\n".join(kept + lines) + "\n")
        real_night(sessions="sess")(wd, assets)
    return mutate


def safetensors_bytes(n_floats: int = 1024) -> bytes:
    header = json.dumps({"model.layers.0.self_attn.q_proj.lora_a": {
        "dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * (4 * n_floats)


def bad_adapter(weights: bytes) -> Callable[[Path, object], None]:
    """wd/adapter: a config naming the right base model, and these weights."""
    def mutate(wd: Path, assets) -> None:
        from evaluation.results import model_sha256
        folder = wd / "adapter"
        folder.mkdir()
        model = str(assets.model_dir)
        (folder / "adapter_config.json").write_text(json.dumps({
            "fine_tune_type": "lora", "num_layers": 1, "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0},
            "model": model, "base_model": {"path": model, "sha256": model_sha256(model)}}))
        (folder / "adapters.safetensors").write_bytes(weights)
    return mutate


def bad_suite(old: str, new: str) -> Callable[[Path, object], None]:
    def mutate(wd: Path, assets) -> None:
        shutil.copytree(ROOT / "evaluation" / "suite", wd / "suite")
        edit("suite/identity.yaml", old, new)(wd, assets)
    return mutate


def council_yoda(**fields) -> Callable[[Path, object], None]:
    def mutate(wd: Path, assets) -> None:
        import yaml
        data = yaml.safe_load((wd / "council.yaml").read_text())
        data["agents"][0].update(fields)
        (wd / "council.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return mutate


def demo_settings(wd: Path):
    from study.config import load_settings
    return load_settings(wd / "autoresearch.toml", demo=True)


def study_db(write: Callable[[Path], None]) -> Callable[[Path, object], None]:
    def mutate(wd: Path, assets) -> None:
        path = Path(demo_settings(wd).storage_url().removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    return mutate


def random_bytes(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def adapters_root(wd: Path) -> Path:
    s = demo_settings(wd)
    return s.path(s.paths.adapters)


def dangling_current(wd: Path, assets) -> None:
    """current -> promoted/exp-b, whose folder was deleted; exp-a is still there."""
    promote_adapter(wd, "exp-a")
    os.symlink(os.path.join("promoted", "exp-b"), adapters_root(wd) / "current")


def promote_adapter(wd: Path, exp_id: str, weights: bytes | None = None, current: bool = False) -> Path:
    """adapters/promoted/<exp_id> with a config naming the demo model and these weights."""
    folder = adapters_root(wd) / "promoted" / exp_id
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "num_layers": 1}))
    (folder / "adapters.safetensors").write_bytes(safetensors_bytes() if weights is None else weights)
    if current:
        os.symlink(os.path.join("promoted", exp_id), adapters_root(wd) / "current")
    return folder


def in_place_of(name: str, make: Callable[[Path], None]) -> Callable[[Path, object], None]:
    """What the demo night reads at settings path `name` ("paths.results", "vault.root", ...)
    is replaced by make(path)."""
    def mutate(wd: Path, assets) -> None:
        s = demo_settings(wd)
        table, key = name.split(".")
        path = s.path(getattr(getattr(s, table), key))
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
    return mutate


def corrupt_history(wd: Path, assets) -> None:
    promoted = wd / "adapters" / "promoted" / "exp-a"
    promoted.mkdir(parents=True)
    (promoted / "adapters.safetensors").write_bytes(safetensors_bytes())
    os.symlink(os.path.join("promoted", "exp-a"), wd / "adapters" / "current")
    (wd / "adapters" / "history.json").write_text('{"events": [{"action": "promote", "id": "exp-a"')


YODA_PROMPT = 'system_prompt: "You are Yoda, the research lead of the Council. You plan experiments and keep the research agenda."'
TOML, SPACE, COUNCIL = "{wd}/autoresearch.toml", "{wd}/search_space.yaml", "{wd}/council.yaml"

ROWS = [
    # autoresearch.toml
    Row("toml-syntax", edit("autoresearch.toml", "max_trials = 4", "max_trials = = 4"), (TOML, "TOML syntax error", "line 7")),
    Row("toml-unknown-key", edit("autoresearch.toml", "max_trials = 4", "max_trials = 4\nmax_trails = 5"),
        (TOML, "study.max_trails", "unknown key")),
    Row("toml-unknown-table", append("autoresearch.toml", "\n[bogus]\nx = 1\n"), (TOML, "bogus", "unknown key")),
    Row("toml-wrong-type", edit("autoresearch.toml", "max_trials = 4", 'max_trials = "four"'), (TOML, "study.max_trials")),
    Row("toml-wrong-type-bool", edit("autoresearch.toml", "prune = true", 'prune = "sometimes"'), (TOML, "study.prune")),
    Row("toml-out-of-range", edit("autoresearch.toml", "jailbreak_floor = 0.70", "jailbreak_floor = 1.7"),
        (TOML, "gate.jailbreak_floor")),
    Row("toml-negative-budget", edit("autoresearch.toml", "budget_s = 240\n", "budget_s = -5\n"), (TOML, "demo.budget_s")),
    Row("storage-url-scheme", edit("autoresearch.toml", 'storage = "sqlite:///autoresearch.db"', 'storage = "mongodb://h/db"'),
        (TOML, "study.storage", "mongodb")),
    Row("config-deadline", edit("autoresearch.toml", 'deadline = "05:00"', 'deadline = "25:99"'), (TOML, "study.deadline", "25:99")),
    Row("cli-deadline", lambda wd, a: None, ("--deadline", "25:99"), args=("--deadline", "25:99")),
    Row("serving-backend", edit("autoresearch.toml", 'backend = "none"', 'backend = "docker"'), (TOML, "serving.backend")),
    Row("serving-not-loopback", both(edit("autoresearch.toml", 'backend = "none"', 'backend = "managed"'),
                                     edit("autoresearch.toml", 'host = "127.0.0.1"', 'host = "0.0.0.0"')),
        (TOML, "serving.host", "0.0.0.0")),
    Row("ssh-host-option", edit("autoresearch.toml", 'host = ""                # ssh', 'host = "-oProxyCommand=sh" # ssh'),
        (TOML, "modes.full.host", "-oProxyCommand=sh")),
    Row("config-missing", lambda wd, a: (wd / "autoresearch.toml").unlink(), (TOML, "file not found")),
    # search_space.yaml
    Row("yaml-syntax", edit("search_space.yaml", "parameters:", "parameters: [\n"), (SPACE, "YAML syntax error")),
    Row("yaml-unknown-parameter", edit("search_space.yaml", "  NUM_LAYERS:",
                                       "  NUM_LAYRES: {type: int, low: 1, high: 2, baseline: 1}\n  NUM_LAYERS:"),
        (SPACE, "parameters.NUM_LAYRES", "unknown parameter")),
    Row("yaml-unknown-field", edit("search_space.yaml", "baseline: 32}", "baseline: 32, stepp: 2}"),
        (SPACE, "parameters.NUM_LAYERS.stepp", "unknown key")),
    Row("yaml-wrong-type", edit("search_space.yaml", "low: 16,     high: 48", 'low: "sixteen", high: 48'),
        (SPACE, "parameters.NUM_LAYERS.low", "sixteen")),
    Row("yaml-inverted-range", edit("search_space.yaml", "low: 16,     high: 48", "low: 48,     high: 16"),
        (SPACE, "parameters.NUM_LAYERS", "inverted range")),
    Row("yaml-baseline-out-of-range", edit("search_space.yaml", "high: 0.15,   baseline: 0.05", "high: 0.15,   baseline: 0.5"),
        (SPACE, "parameters.DROPOUT.baseline", "0.5")),
    Row("yaml-warm-start-out-of-range", edit("search_space.yaml", "- {LEARNING_RATE: 1.0e-4}", "- {LEARNING_RATE: 1.0}"),
        (SPACE, "warm_start[0].LEARNING_RATE", "1.0")),
    # council.yaml
    Row("council-syntax", lambda wd, a: (wd / "council.yaml").write_text("agents: [\n  - name: x\n"),
        (COUNCIL, "YAML syntax error")),
    Row("council-bad-agent-name", edit("council.yaml", "name: yoda", "name: Yoda!"), (COUNCIL, "name", "Yoda!")),
    Row("council-empty-system-prompt", edit("council.yaml", YODA_PROMPT, 'system_prompt: ""'),
        (COUNCIL, "agents[0:yoda].system_prompt", "must not be empty")),
    Row("council-empty-role", edit("council.yaml", "role: research lead", 'role: "  "'),
        (COUNCIL, "agents[0:yoda].role", "must not be empty")),
    Row("council-no-domain-fact", council_yoda(domain_facts=[]),
        (COUNCIL, "agents[0:yoda].domain_facts")),
    # state on disk the night reads: never repaired, overwritten or deleted
    Row("db-random-bytes", study_db(random_bytes), ("autoresearch.db", "not a SQLite database", "restore it")),
    Row("db-is-a-folder", study_db(lambda path: path.mkdir()), ("autoresearch.db", "is a folder")),
    Row("current-dangling", dangling_current,
        ("adapters/current", "promoted/exp-b", "which does not exist", "promoted adapters here: exp-a",
         "python -m study.promote --adapters", "--use exp-a")),
    Row("current-not-a-link", lambda wd, a: (adapters_root(wd).mkdir(parents=True), (adapters_root(wd) / "current").mkdir()),
        ("adapters/current", "is not a symlink")),
    Row("history-corrupt-night", corrupt_history, ("adapters/history.json", "events", "unreadable history")),
    Row("results-foreign", in_place_of("paths.results", lambda path: path.write_text("date\tlr\tscore\n1\t2\t3\n")),
        ("results.tsv", "not this project's results.tsv")),
    Row("vault-root-is-a-file", in_place_of("vault.root", lambda path: path.write_text("")),
        ("is a file, not a folder", "[vault] root")),
    Row("nightly-lock-is-a-folder", in_place_of("paths.cache", lambda path: (path / "nightly.lock").mkdir(parents=True)),
        ("nightly.lock", "not a plain file")),
    # a real night: model, sessions, corpus
    Row("missing-model-folder", real_night(model="/nonexistent/model-dir"), (TOML, "modes.proxy.model", "/nonexistent/model-dir"),
        command="real-night"),
    Row("sessions-missing", real_night(sessions="no-such-sessions"), (TOML, "paths.sessions", "no-such-sessions"),
        command="real-night"),
    Row("sessions-invalid-json", sessions_folder(["{not json", '{"messages": [', "nope", "[1, 2]"]),
        ("{wd}/sess/yoda.jsonl", "line 3", "invalid JSON"), command="real-night"),
    Row("empty-corpus", sessions_folder(None), (TOML, "paths.sessions", "empty corpus"), command="real-night"),
    Row("empty-session-file", sessions_folder([""], good=0), (TOML, "paths.sessions", "empty corpus"), command="real-night"),
    # the eval: adapters and suite
    Row("adapter-truncated-safetensors", bad_adapter(safetensors_bytes()[:2000]),
        ("{wd}/adapter/adapters.safetensors", "q_proj.lora_a", "truncated or corrupt"), command="eval"),
    Row("adapter-garbage-safetensors", bad_adapter(b"garbage"),
        ("{wd}/adapter/adapters.safetensors", "not a safetensors file"), command="eval"),
    Row("eval-unknown-scorer", bad_suite("scorer: choice", "scorer: telepathy"),
        ("{wd}/suite/identity.yaml", "scorer", "telepathy"), command="eval", args=("--suite", "{wd}/suite")),
    Row("eval-unknown-agent", bad_suite("agent: yoda", "agent: jar-jar"),
        ("{wd}/suite/identity.yaml", "agent", "jar-jar"), command="eval", args=("--suite", "{wd}/suite")),
    Row("eval-duplicate-id", bad_suite("id: yoda-identity-02", "id: yoda-identity-01"),
        ("{wd}/suite/identity.yaml", "yoda-identity-01", "duplicate id"), command="eval", args=("--suite", "{wd}/suite")),
    Row("eval-choice-answer-out-of-range", bad_suite("  answer: 1\n", "  answer: 7\n"),
        ("{wd}/suite/identity.yaml", "yoda-identity-01", "out of range"), command="eval", args=("--suite", "{wd}/suite")),
    # promotion history
    Row("promote-corrupt-history", corrupt_history, ("{wd}/adapters/history.json", "events", "unreadable history"),
        command="promote"),
]


def argv(row: Row, wd: Path, assets) -> list[str]:
    py = [sys.executable, "-m"]
    args = [a.replace("{wd}", str(wd)) for a in row.args]
    if row.command == "night":
        return py + ["study.nightly", "--demo", "--config", str(wd / "autoresearch.toml"), "--no-progress",
                     "--max-trials", "1", *args]
    if row.command == "real-night":
        return py + ["study.nightly", "--config", str(wd / "autoresearch.toml"), "--no-progress", "--max-trials", "1"]
    if row.command == "eval":
        adapter = ["--adapter", str(wd / "adapter")] if (wd / "adapter").exists() else []
        return py + ["evaluation", "--model", str(assets.model_dir), *adapter, "--out", str(wd / "out.json"),
                     "--no-progress", *args]
    assert row.command == "promote"
    return py + ["study.promote", "--rollback", "--adapters", str(wd / "adapters")]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (symlinks not followed): kind, size, mtime, and text content."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_table_has_every_kind_of_bad_input():
    assert len(ROWS) >= 20 and len({r.id for r in ROWS}) == len(ROWS)


def run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def assert_one_line(out: subprocess.CompletedProcess, row: Row, wd: Path) -> str:
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in row.expect:
        assert word.replace("{wd}", str(wd)) in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(row, tmp_path, demo_assets):
    wd = make_workdir(tmp_path / "wd", pretrain_s=PRETRAIN_S)
    link_demo_cache(wd, demo_assets)
    row.mutate(wd, demo_assets)
    before = snapshot(wd)
    cmd = argv(row, wd, demo_assets)
    line = assert_one_line(run(cmd), row, wd)
    assert snapshot(wd) == before, "the command created or changed files"
    assert not list(ROOT.glob("eval_results.json*"))
    if row.command in ("night", "real-night"):
        dry = run(cmd + ["--dry-run"])
        assert (dry.returncode, dry.stderr.strip()) == (2, line), "--dry-run and the night differ"
        assert snapshot(wd) == before, "the dry run created or changed files"


def as_the_night_sees_it(row: Row, wd: Path) -> Path:
    """The eval and promote rows' bad input, where a night reads it; returns the folder to
    run the night from. The night always reads the evaluation package's own suite, so a bad
    suite is seen through a copy of the package, found first on the path from that folder."""
    here = wd.parent / "run-from"
    here.mkdir()
    if (wd / "suite").is_dir():
        shutil.copytree(ROOT / "evaluation", here / "evaluation",
                        ignore=shutil.ignore_patterns("__pycache__", "suite"))
        shutil.copytree(wd / "suite", here / "evaluation" / "suite")
    if (wd / "adapter").is_dir():
        promote_adapter(wd, "exp-a", (wd / "adapter" / "adapters.safetensors").read_bytes(), current=True)
    if row.command == "promote":
        # corrupt_history made it under wd/adapters, which the demo night may not use.
        if adapters_root(wd) != wd / "adapters":
            shutil.copytree(wd / "adapters", adapters_root(wd), symlinks=True)
    return here


NIGHT_FACING = [r for r in ROWS if r.command in ("eval", "promote")]


@pytest.mark.parametrize("row", NIGHT_FACING, ids=lambda r: r.id)
def test_the_night_and_its_dry_run_refuse_what_the_eval_and_promote_refuse(row, tmp_path, demo_assets):
    wd = make_workdir(tmp_path / "wd", pretrain_s=PRETRAIN_S)
    link_demo_cache(wd, demo_assets)
    row.mutate(wd, demo_assets)
    here = as_the_night_sees_it(row, wd)
    before = snapshot(wd)
    night = [sys.executable, "-m", "study.nightly", "--demo", "--config", str(wd / "autoresearch.toml"),
             "--no-progress", "--max-trials", "1"]
    real, dry = run(night, cwd=here), run(night + ["--dry-run"], cwd=here)
    assert real.returncode == dry.returncode == 2, f"{real.returncode}/{dry.returncode}\n{real.stderr}\n{dry.stderr}"
    assert real.stderr == dry.stderr and len(real.stderr.strip().splitlines()) == 1, real.stderr
    where = {"{wd}/suite": str(here / "evaluation" / "suite"),
             "{wd}/adapter/": str(adapters_root(wd) / "promoted" / "exp-a") + "/",
             "{wd}/adapters": str(adapters_root(wd))}
    for word in row.expect:
        for old, new in where.items():
            word = word.replace(old, new)
        assert word in real.stderr, real.stderr
    assert snapshot(wd) == before
