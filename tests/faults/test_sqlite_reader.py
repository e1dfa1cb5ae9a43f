"""The study's SQLite file held open by readers during a 2-trial night: optuna-dashboard
(`python -m study.dashboard`, polled over HTTP) and a raw sqlite3 connection that keeps a
read transaction open the whole night. WAL mode and timeouts: no "database is locked"
anywhere, both trials finish, and every read succeeded.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from faultlib import ROOT, free_port, load_study, night_env, planted_hits, run_night, trial_log_lines, wait_until

pytestmark = pytest.mark.slow
LOCKED = "database is locked"


class HeldReader(threading.Thread):
    """A reader that never lets go: one read transaction after another, each held ~5 s."""

    def __init__(self, db):
        super().__init__(daemon=True)
        self.db, self.stop, self.errors, self.counts = db, threading.Event(), [], []

    def run(self) -> None:
        con = sqlite3.connect(self.db, timeout=5, isolation_level=None)
        try:
            while not self.stop.is_set():
                try:
                    con.execute("BEGIN")
                    self.counts.append(con.execute("SELECT count(*) FROM trials").fetchone()[0])
                    self.stop.wait(5)
                    con.execute("COMMIT")
                except sqlite3.Error as exc:
                    self.errors.append(str(exc))
                    time.sleep(0.2)
        finally:
            con.close()


class DashboardPoller(threading.Thread):
    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.base, self.stop, self.errors, self.polls = f"http://127.0.0.1:{port}", threading.Event(), [], 0

    def get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                listing = self.get("/api/studies")   # optuna-dashboard 0.21 says "study_summaries"
                for s in listing.get("studies", listing.get("study_summaries")):
                    self.get(f"/api/studies/{s['study_id']}")
                self.polls += 1
            except Exception as exc:   # any failure to read is what this test looks for
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stop.wait(0.3)


def test_readers_hold_the_db_during_a_two_trial_night(fault_workdir, tmp_path):
    wd = fault_workdir(overrides={"heartbeat_interval = 60": "heartbeat_interval = 1"})  # more writers
    port = free_port()
    dash_log = open(tmp_path / "dashboard.out", "wb")
    dash = subprocess.Popen([sys.executable, "-m", "study.dashboard", "--config", str(wd / "autoresearch.toml"),
                             "--demo", "--port", str(port)], cwd=ROOT, env=night_env(), stdout=dash_log,
                            stderr=subprocess.STDOUT)
    poller, reader = DashboardPoller(port), HeldReader(wd / "autoresearch.db")
    try:
        assert wait_until(lambda: _answers(poller), 120, 0.5), "the dashboard never answered"
        poller.start()
        reader.start()
        out = run_night(wd, "--max-trials", "2")
    finally:
        poller.stop.set()
        reader.stop.set()
        dash.terminate()
        dash.wait(30)
        dash_log.close()
    night_text = out.stdout + out.stderr
    assert out.returncode == 0, night_text[-3000:]
    texts = {"night": night_text, "dashboard": (tmp_path / "dashboard.out").read_text(errors="replace"),
             "trial logs": "\n".join(trial_log_lines(wd))}
    for name, text in texts.items():
        assert LOCKED not in text, f"{name}: {text[text.index(LOCKED) - 500:][:1200]}"
    finished = [t for t in load_study(wd).get_trials(deepcopy=False) if t.state.is_finished()]
    assert len(finished) == 2 and all("result" in t.user_attrs for t in finished)
    assert reader.errors == [] and poller.errors == []
    assert reader.counts and poller.polls >= 10, (reader.counts, poller.polls)
    with sqlite3.connect(wd / "autoresearch.db") as con:   # why it works: readers never block the writer
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert planted_hits(wd) == []


def _answers(poller: DashboardPoller) -> bool:
    try:
        poller.get("/api/meta")
        return True
    except OSError:
        return False
