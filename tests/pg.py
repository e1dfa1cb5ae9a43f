"""A real PostgreSQL for tests: Debian's binaries, a private cluster on 127.0.0.1.

`pg_server` (session): initdb + pg_ctl start in a temp folder, on a free loopback port,
trust auth for a `test` role; stopped with `pg_ctl stop` at teardown. PostgreSQL refuses
to run as root, so when the tests run as root the cluster runs as the `postgres` user
(Debian's package creates it), else `nobody`, with the folder chowned to that user.
`pg_url` (function): a fresh database per test, as a SQLAlchemy URL.
Skips cleanly when no PostgreSQL is installed (`.ci/run` installs Debian's `postgresql`).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from netutil import free_port

ROLE = "test"


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin with initdb and pg_ctl, or None."""
    dirs = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    dirs = [d for d in dirs if (d / "pg_ctl").exists()]
    if not dirs:
        return None
    return max(dirs, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the cluster as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


@dataclass
class PgServer:
    bin_dir: Path
    root: Path           # the temp folder: data/, socket/, log
    port: int
    user: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg2://{ROLE}@127.0.0.1:{self.port}/{db}"

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kw = {}
        if self.user is not None:
            kw = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C",
               "HOME": str(self.root), "TZ": "UTC"}
        return subprocess.run([str(self.bin_dir / argv[0]), *argv[1:]], env=env, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, **kw)

    def start(self) -> None:
        out = self.run("initdb", "-D", str(self.data), "-U", ROLE, "-A", "trust", "-E", "UTF8",
                       "--locale=C", "--no-sync")
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr[-2000:]}")
        # -F: no fsync (a throwaway cluster); the socket lives in our folder, not /var/run.
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root / 'socket'} -F -c max_connections=100"
        out = self.run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                       "-w", "-t", "60", "start", timeout=90)
        if out.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {out.stdout[-1000:]} {out.stderr[-1000:]} {log[-2000:]}")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)

    def create_database(self, name: str) -> str:
        import psycopg2
        con = psycopg2.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname="postgres")
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()
        return self.url(name)


def start_server() -> PgServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    user = _run_as()
    # Under /tmp, not pytest's tmp_path: its parents are private to root, and the
    # server's user must reach its own folder.
    root = Path(tempfile.mkdtemp(prefix="pgtest-"))
    (root / "socket").mkdir()
    if user is not None:
        for p in (root, root / "socket"):
            os.chown(p, user.pw_uid, user.pw_gid)
    server = PgServer(bin_dir, root, free_port(), user)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="session")
def pg_server():
    server = start_server()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
