"""What the night checks before anything starts; `--dry-run` runs the same checks.

Each check reads (never writes, creates or repairs) one thing the night will use and
raises ConfigError naming the path and what to do, so a bad file or a bad state on disk
ends the night with exit 2 and one line before it takes its lock, builds a model or
opens the study. Everything here is cheap (no model is loaded, no file hashed, no
network): the dry run stays well under a second.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from common.council import load_council
from common.errors import ConfigError
from study.night import Plan
from study.promoter import TMP_MARK, Promoter

SQLITE_MAGIC = b"SQLite format 3\x00"
# results.tsv's first eleven columns (DESIGN §3); later versions append columns after them.
RESULTS_PREFIX = ["experiment_id", "timestamp", "mode", "model", "score", "baseline", "result",
                  "train_loss", "val_loss", "elapsed_s", "config"]


def _writable_folder(path: Path, what: str) -> None:
    """A folder the night writes into: a folder (or creatable under one), writable."""
    if path.exists() and not path.is_dir():
        raise ConfigError(str(path), None, f"is a file, not a folder ({what}): move it away or configure another path")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(str(probe), None, f"is a file, so {path} ({what}) cannot be created in it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(str(probe), None, f"not writable: the night writes {what} there")


def check_folders(p: Plan) -> None:
    s = p.settings
    named = {"paths.data": s.paths.data, "paths.experimental": s.paths.experimental, "paths.logs": s.paths.logs,
             "paths.cache": s.paths.cache, "paths.artifacts": s.paths.artifacts, "paths.reports": s.paths.reports,
             "vault.root": s.vault.root}
    for key, rel in named.items():
        _writable_folder(s.path(rel), f"[{key.split('.')[0]}] {key.split('.')[1]}")
    _writable_folder(p.adapters_root, "the adapters")
    _writable_folder(s.path(s.paths.results).parent, "results.tsv")


def check_locks(p: Plan) -> None:
    """The nightly's lock and the study's mutex files are flocked: each must be a plain file."""
    s = p.settings
    locks = [s.path(s.paths.cache) / "nightly.lock"]
    db = _sqlite_path(s.storage_url())
    if db is not None:
        locks += sorted(db.parent.glob(f"{db.name}.*.lock"))
    for lock in locks:
        if os.path.lexists(lock) and not lock.is_file():
            raise ConfigError(str(lock), None, "a lock file that is not a plain file: remove it "
                                               "(no night is running when it is not a file)")


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    path = url[len(prefix):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path).expanduser()


def check_study_db(p: Plan) -> None:
    """A SQLite study file that exists must be a readable SQLite database. It holds every
    trial ever run, so a corrupt one is never opened for writing (Optuna would try to
    create its tables in it): the user restores it. Other databases are checked when the
    night connects (a network round trip is not a preflight)."""
    url = p.settings.storage_url()
    path = _sqlite_path(url)
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(str(path), None, "is a folder, not the study database: move it away, "
                                           "or point [study] storage at the study file")
    if not path.exists():
        _writable_folder(path.parent, "the study database")
        return
    if not path.is_file():
        raise ConfigError(str(path), None, "is not a regular file: point [study] storage at the study file")
    restore = "restore it from a backup or move it away (the night never overwrites it)"
    with open(path, "rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise ConfigError(str(path), None, f"not a SQLite database (corrupt?): {restore}")
    try:
        # immutable: a pure read, no journal, -wal or -shm file created beside it.
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True)
        try:
            con.execute("SELECT name FROM sqlite_master").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(str(path), None, f"unreadable SQLite database ({exc}): {restore}") from None


def _repair_hint(promoter: Promoter, cid: str) -> str:
    existing = sorted(d.name for d in promoter.promoted.glob("*") if d.is_dir() and TMP_MARK not in d.name) \
        if promoter.promoted.is_dir() else []
    have = f"promoted adapters here: {', '.join(existing)}" if existing else "no promoted adapter is left"
    events = promoter.history()
    before = next((e.get("previous") for e in reversed(events)
                   if e.get("action") == "promote" and e.get("id") == cid), None)
    root = promoter.root
    if before and before in existing:
        return f"{have}; repair: python -m study.promote --adapters {root} --rollback (back to {before})"
    if existing:
        return f"{have}; repair: python -m study.promote --adapters {root} --use {existing[-1]}"
    if before is None:
        return f"{have}; repair: python -m study.promote --adapters {root} --rollback (back to the base model)"
    return f"{have}; remove {promoter.link} to start again from the base model"


def check_adapters(p: Plan) -> None:
    """adapters/current, history.json and the promoted folder the night serves and judges against."""
    promoter = Promoter(p.adapters_root)
    promoter.history()                      # unreadable history.json: ConfigError naming it
    link = promoter.link
    if os.path.lexists(link) and not os.path.islink(link):
        raise ConfigError(str(link), None, "is not a symlink (the night repoints it): move it away")
    cid = promoter.current_id()
    if cid is None:
        return
    target = promoter.promoted / cid
    if not target.is_dir():
        raise ConfigError(str(link), None, f"points at {target}, which does not exist; {_repair_hint(promoter, cid)}")
    check_adapter_folder(target)


def check_adapter_folder(folder: Path) -> None:
    cfg = folder / "adapter_config.json"
    try:
        json.loads(cfg.read_text())
    except FileNotFoundError:
        raise ConfigError(str(cfg), None, "file not found: the promoted adapter is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(cfg), None, f"not JSON ({exc}): the promoted adapter is corrupt") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ConfigError(str(folder), None, "no *.safetensors: the promoted adapter is incomplete")
    from evaluation.harness import check_safetensors   # header only: no weights are read
    for w in weights:
        check_safetensors(w)
    if (folder / "eval_results.json").exists():
        from evaluation import read_eval_results
        read_eval_results(folder / "eval_results.json")


def check_results(p: Plan) -> None:
    """results.tsv is rewritten from the study: a file that is not ours (the old bash
    loop's hand-kept log) must not be replaced silently."""
    path = p.settings.path(p.settings.paths.results)
    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise ConfigError(str(path), None, "is not a file: move it away (the night writes results.tsv there)")
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().rstrip("\n")
    except UnicodeDecodeError:
        first = "<binary>"
    if first and first.split("\t")[:len(RESULTS_PREFIX)] != RESULTS_PREFIX:
        raise ConfigError(str(path), None, "not this project's results.tsv (its header differs): the night "
                                           "rewrites this file from the study, so move yours away first")


def check_council_and_suite(p: Plan) -> None:
    """The Council, and the eval suite the night always uses, validated as the eval will."""
    from evaluation.harness import EvalConfig
    from evaluation.suite import load_suite
    council = load_council(p.council_path)
    cfg = EvalConfig(model="")
    load_suite(cfg.suite_dir, council, min_dev_per_cell=cfg.min_dev_per_cell,
               min_holdout_per_cell=cfg.min_holdout_per_cell)


def check_model_and_sessions(p: Plan) -> None:
    """A real model's folder and the user's sessions (the demo builds its own on first use,
    from a package that must be installed: SmolLM2's GGUF)."""
    if p.is_demo_model:
        from demo import check_model
        check_model(p.model)
        return
    s, ms = p.settings, p.mode_settings
    if ms.eval_on == "local" and not Path(ms.local_model).expanduser().is_dir():
        raise ConfigError(s.file, f"modes.{p.mode.mode}." + ("eval_model" if ms.eval_model else "model"),
                          f"model folder not found on this machine: {ms.local_model}")
    check_sessions(p)


def check_sessions(p: Plan) -> None:
    """Read (not prepare) the user's sessions: a wrong folder, a broken export or an
    empty one stops the night with exit 2 and nothing created."""
    from corpus.records import read_sessions  # numpy & co.: only for a real model
    s = p.settings
    folder = s.path(s.paths.sessions)
    if not folder.is_dir():
        raise ConfigError(s.file, "paths.sessions", f"sessions folder not found: {folder}")
    if not any(f.examples for f in read_sessions(folder, load_council(p.council_path))):
        raise ConfigError(s.file, "paths.sessions", f"empty corpus: no usable session line in {folder}/*.jsonl")


# In the order a user would fix them: their own files first, then the state on disk.
CHECKS: tuple[Callable[[Plan], None], ...] = (
    check_council_and_suite, check_model_and_sessions, check_folders, check_locks, check_study_db,
    check_adapters, check_results)


def preflight(p: Plan) -> None:
    """Every check, first failure raised (ConfigError: exit 2, one line)."""
    for check in CHECKS:
        check(p)
