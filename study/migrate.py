"""python -m study.migrate --from sqlite:///autoresearch.db --to postgresql://user@host/db

Moves studies (trials, params, values, user and system attrs, intermediate values) with
Optuna's copy_study, then checks the copy: the same trial numbers, states, values and
user attrs, and the same study user attrs (the promoted baseline). The source is left
as it was. Refuses (exit 2, one line) a source that does not exist, a study name that is
not there, one that already exists at the destination, and a study with RUNNING trials
(a night in progress: its trials would arrive RUNNING and be failed as stale later).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_MISMATCH, EXIT_CONFIG = 0, 1, 2


class MigrateError(Exception):
    """A refusal: printed as one line, exit 2."""


@dataclass(frozen=True)
class Copied:
    name: str
    trials: int
    by_state: dict[str, int]


def _where(url: str) -> str:
    return url.split("@")[-1]   # never print a password


def check_source(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("://", 1)[1].split("?", 1)[0].removeprefix("/")
        if path in ("", ":memory:") or not Path(path).expanduser().is_file():
            raise MigrateError(f"--from {url}: no such SQLite file")


def open_url(url: str, flag: str):
    """An RDBStorage (tables created at the destination under the schema lock)."""
    from optuna.storages import RDBStorage
    from study.dbmutex import schema_lock
    try:
        with schema_lock(url):
            return RDBStorage(url, engine_kwargs={} if url.startswith("sqlite") else {"pool_pre_ping": True})
    except Exception as exc:
        raise MigrateError(f"{flag} {_where(url)}: cannot open: {' '.join(str(exc).split())[:200]}") from None


def _fingerprint(study) -> list[tuple]:
    return [(t.number, t.state.name, t.values, t.params, t.user_attrs, t.intermediate_values)
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]


def verify(src, dst) -> list[str]:
    """Differences between the source and the copied study ([] when identical)."""
    problems = []
    a, b = _fingerprint(src), _fingerprint(dst)
    if len(a) != len(b):
        problems.append(f"{len(a)} trials in the source, {len(b)} in the copy")
    for x, y in zip(a, b):
        if x != y:
            problems.append(f"trial {x[0]} differs in the copy")
    if src.user_attrs != dst.user_attrs:
        problems.append("study user attrs differ in the copy")
    return problems


def migrate(from_url: str, to_url: str, names: list[str] | None = None) -> list[Copied]:
    import optuna
    from optuna.trial import TrialState

    check_source(from_url)
    src_storage = open_url(from_url, "--from")
    available = optuna.get_all_study_names(src_storage)
    names = names or available
    if not names:
        raise MigrateError(f"--from {_where(from_url)}: holds no study")
    missing = [n for n in names if n not in available]
    if missing:
        raise MigrateError(f"--study {missing[0]}: not in {_where(from_url)} (it has: {', '.join(available) or 'none'})")
    dst_storage = open_url(to_url, "--to")
    clash = [n for n in names if n in optuna.get_all_study_names(dst_storage)]
    if clash:
        raise MigrateError(f"--to {_where(to_url)}: a study named {clash[0]} exists there already (nothing copied)")
    for name in names:
        src = optuna.load_study(study_name=name, storage=src_storage)
        running = [t.number for t in src.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if running:
            raise MigrateError(f"study {name}: trials {running} are RUNNING (a night in progress, or a crashed "
                               "one: let the next night recover them first); nothing copied")
    done = []
    for name in names:
        optuna.copy_study(from_study_name=name, from_storage=src_storage, to_storage=dst_storage)
        src = optuna.load_study(study_name=name, storage=src_storage)
        dst = optuna.load_study(study_name=name, storage=dst_storage)
        problems = verify(src, dst)
        if problems:
            raise RuntimeError(f"study {name}: the copy does not match: " + "; ".join(problems[:5]))
        counts: dict[str, int] = {}
        for t in dst.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        done.append(Copied(name, sum(counts.values()), counts))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m study.migrate",
                                 description="Copy studies with their trials from one Optuna storage to another "
                                             "(e.g. SQLite to PostgreSQL for several workers), then verify the copy.")
    ap.add_argument("--from", dest="src", required=True, metavar="URL", help="source storage URL")
    ap.add_argument("--to", dest="dst", required=True, metavar="URL", help="destination storage URL")
    ap.add_argument("--study", action="append", default=None, metavar="NAME",
                    help="a study to copy (repeatable; default: every study in the source)")
    args = ap.parse_args(argv)
    if args.src == args.dst:
        print("error: --from and --to are the same storage", file=sys.stderr)
        return EXIT_CONFIG
    import warnings
    warnings.filterwarnings("ignore", module="optuna")
    try:
        copied = migrate(args.src, args.dst, args.study)
    except MigrateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    for c in copied:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(c.by_state.items()))
        print(f"copied {c.name}: {c.trials} trials ({states}) to {_where(args.dst)}; verified")
    print("point [study] storage in autoresearch.toml at the new URL; the source was left unchanged")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
