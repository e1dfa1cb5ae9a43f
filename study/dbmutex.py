"""A mutex held through the study's own database, so workers on several machines agree.

PostgreSQL: a session-level advisory lock (`pg_advisory_lock`) on a dedicated connection;
MySQL: GET_LOCK / RELEASE_LOCK; SQLite (one machine only, as SQLite itself): an flock
on a file beside the database, `<db>.<name>.lock`. The server drops a PostgreSQL/MySQL
lock when its connection dies and the kernel drops an flock when its process dies, so a
killed worker never leaves the others blocked.

    with db_mutex(storage_url, "promote:council-proxy-demo"):
        ...   # one worker at a time, on every machine
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from pathlib import Path
from typing import Iterator

DEFAULT_TIMEOUT_S = 600.0
_POLL_S = 0.05
_ENGINES: dict[str, object] = {}
_ENGINES_LOCK = threading.Lock()
_MEMORY_LOCKS: dict[str, threading.Lock] = {}


class MutexTimeout(RuntimeError):
    """Another worker held the lock for longer than the timeout."""


def lock_key(name: str) -> int:
    """A signed 64-bit key from the name, the same on every machine and PostgreSQL version
    (Python's hash() is salted per process; hashtext() is an internal of PostgreSQL)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _engine(url: str):
    import sqlalchemy
    from sqlalchemy.pool import NullPool
    with _ENGINES_LOCK:
        if url not in _ENGINES:
            # AUTOCOMMIT: a session lock needs no transaction, and an open one would sit
            # "idle in transaction" on the server for as long as the lock is held.
            _ENGINES[url] = sqlalchemy.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        return _ENGINES[url]


class _ServerLock:
    """PostgreSQL and MySQL: the lock lives in the server, on this connection's session."""

    def __init__(self, url: str, name: str):
        self.url, self.name = url, name
        self.mysql = url.startswith("mysql")
        self.conn = None

    def acquire(self, timeout_s: float) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError
        self.conn = _engine(self.url).connect()
        try:
            if self.mysql:
                # MySQL names are at most 64 characters: use a digest of ours.
                got = self.conn.execute(text("SELECT GET_LOCK(:n, :t)"),
                                        {"n": self._mysql_name(), "t": max(0, int(timeout_s))}).scalar()
                if got != 1:
                    raise MutexTimeout(f"lock {self.name!r} not acquired within {timeout_s:.0f} s")
                return
            # lock_timeout bounds the wait of pg_advisory_lock (a lock wait like any other).
            self.conn.execute(text(f"SET lock_timeout = {max(1, int(timeout_s * 1000))}"))
            try:
                self.conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(self.name)})
            except DBAPIError as exc:
                if getattr(exc.orig, "pgcode", None) == "55P03":   # lock_not_available
                    raise MutexTimeout(f"lock {self.name!r} not acquired within {timeout_s:.0f} s") from None
                raise
        except BaseException:
            self._close()
            raise

    def _mysql_name(self) -> str:
        return "ar-" + hashlib.blake2b(self.name.encode(), digest_size=16).hexdigest()

    def release(self) -> None:
        from sqlalchemy import text
        if self.conn is None:
            return
        try:
            if self.mysql:
                self.conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self._mysql_name()})
            else:
                self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(self.name)})
        except Exception:
            pass   # a dead connection has released the lock already; closing it is enough
        finally:
            self._close()

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def lock_file_for(url: str, name: str) -> Path | None:
    """`<db>.<name>.lock` beside a SQLite file; None for an in-memory database."""
    path = url.split("://", 1)[1].split("?", 1)[0].removeprefix("/")
    if path in ("", ":memory:") or path.startswith(":memory:"):
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "lock"
    return Path(path).expanduser().with_name(f"{Path(path).name}.{safe}.lock")


class _FileLock:
    """SQLite: an flock, which the kernel releases when the process dies."""

    def __init__(self, url: str, name: str):
        self.path = lock_file_for(url, name)
        self.name = name
        self.fd: int | None = None
        self.mem: threading.Lock | None = None

    def acquire(self, timeout_s: float) -> None:
        if self.path is None:   # in-memory SQLite: one process by definition
            lock = _MEMORY_LOCKS.setdefault(self.name, threading.Lock())
            if not lock.acquire(timeout=timeout_s):
                raise MutexTimeout(f"lock {self.name!r} not acquired within {timeout_s:.0f} s")
            self.mem = lock
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise MutexTimeout(f"lock {self.path} not acquired within {timeout_s:.0f} s") from None
                time.sleep(_POLL_S)

    def release(self) -> None:
        if self.mem is not None:
            self.mem.release()
            self.mem = None
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_HELD = threading.local()   # {(url, name): depth} of the locks this thread holds


def _held() -> dict[tuple[str, str], int]:
    if not hasattr(_HELD, "depth"):
        _HELD.depth = {}
    return _HELD.depth


class DbMutex:
    """acquire()/release() (idempotent) for code that must release at a point of its own
    choosing; `with DbMutex(...)` or db_mutex() otherwise. Re-entrant within a thread
    (a nested acquire of a name this thread holds is a no-op): a second connection or
    file descriptor would otherwise wait for this thread's own lock forever."""

    def __init__(self, storage_url: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url, self.name, self.timeout_s = storage_url, name, timeout_s
        self._impl = _FileLock(storage_url, name) if storage_url.startswith("sqlite") else _ServerLock(storage_url, name)
        self.held = False

    def acquire(self) -> "DbMutex":
        if self.held:
            raise RuntimeError(f"mutex {self.name!r} is already held by this object")
        key, depth = (self.url, self.name), _held()
        if key not in depth:
            self._impl.acquire(self.timeout_s)
        depth[key] = depth.get(key, 0) + 1
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        key, depth = (self.url, self.name), _held()
        depth[key] -= 1
        if depth[key] == 0:
            del depth[key]
            self._impl.release()

    def __enter__(self) -> "DbMutex":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def db_mutex(storage_url: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DbMutex]:
    mutex = DbMutex(storage_url, name, timeout_s)
    mutex.acquire()
    try:
        yield mutex
    finally:
        mutex.release()


def schema_lock(storage_url: str, timeout_s: float = 120.0):
    """Hold while opening RDBStorage: Optuna creates its tables on first use without a
    lock, and two workers opening a fresh PostgreSQL database at once collide
    (UniqueViolation on pg_type "studydirection"). Tables that exist are left alone."""
    return db_mutex(storage_url, "optuna-schema", timeout_s)
