"""Several workers on one study, against a real PostgreSQL (tests/pg.py) and SQLite.

The protocol tests run real worker processes (tests/worker_harness.py: the real slot
protocol, gate, compare-and-swap promotion and Promoter, with a synthetic eval instead of
training), so they are quick. tests/test_workers_e2e.py runs real nightly workers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from pg import pg_server, pg_url  # noqa: F401  (fixtures)
from worker_harness import synthetic_eval

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("worker_harness.py")
STUDY = "council-proxy-synthetic"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=["postgresql", "sqlite"])
def storage_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'study.db'}"


def start_worker(url: str, tmp: Path, i: int, night: str, cap: int, *extra: str,
                 env: dict | None = None) -> subprocess.Popen:
    argv = [sys.executable, str(HARNESS), "--url", url, "--study", STUDY, "--night", night,
            "--cap", str(cap), "--adapters", str(tmp / "adapters"), "--work", str(tmp / f"w{i}"), *extra]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def run_worker(url: str, tmp: Path, i: int, night: str, cap: int, *extra: str) -> dict:
    """A worker in this process: for tests where only the protocol's state matters."""
    import worker_harness
    return worker_harness.work(["--url", url, "--study", STUDY, "--night", night, "--cap", str(cap),
                                "--adapters", str(tmp / "adapters"), "--work", str(tmp / f"w{i}"), *extra])


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[dict]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=url)


def promotion_chain(study: optuna.Study, adapters: Path) -> list[optuna.trial.FrozenTrial]:
    """The kept trials, checked: each promoted against a distinct baseline, the Promoter's
    history and the study's `baseline` attr agreeing on the order."""
    from study.promoter import Promoter
    kept = [t for t in study.trials if t.user_attrs.get("result") == "kept"]
    against = [t.user_attrs["promoted_against"] for t in kept]
    assert len(set(against)) == len(against), f"two promotions against one baseline: {against}"
    events = [e for e in Promoter(adapters).history() if e["action"] == "promote"]
    assert len(events) == len(kept)
    ids = [e["id"] for e in events]
    by_id = {t.user_attrs["experiment_id"]: t for t in kept}
    assert set(ids) == set(by_id)
    for prev, cur in zip(["base", *ids], ids):
        assert by_id[cur].user_attrs["promoted_against"] == prev   # a chain: each on the one before
    assert study.user_attrs["baseline"]["id"] == ids[-1] == Promoter(adapters).current_id()
    return kept


# -- the mutex ------------------------------------------------------------------------------

MUTEX_CHILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from study.dbmutex import DbMutex
url, name, log, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for _ in range(rounds):
    with DbMutex(url, name):
        with open(log, "a") as f:
            f.write(f"in {{os.getpid()}}\\n")
        time.sleep(0.05)
        with open(log, "a") as f:
            f.write(f"out {{os.getpid()}}\\n")
if rounds == 0:
    m = DbMutex(url, name).acquire()
    print("held", flush=True)
    time.sleep(60)
"""


def mutex_child(url: str, log: Path, rounds: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", MUTEX_CHILD.format(root=str(ROOT)), url, "m", str(log), str(rounds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_mutex_excludes_other_processes(storage_url, tmp_path):
    log = tmp_path / "log"
    procs = [mutex_child(storage_url, log, 4) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 24
    for (a, pa), (b, pb) in zip(events[0::2], events[1::2]):
        assert (a, b, pa) == ("in", "out", pb), "two holders at once"


def test_mutex_times_out_and_a_killed_holder_releases(storage_url, tmp_path):
    from study.dbmutex import DbMutex, MutexTimeout
    holder = mutex_child(storage_url, tmp_path / "log", 0)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(MutexTimeout):
            DbMutex(storage_url, "m", timeout_s=0.5).acquire()
        assert time.monotonic() - t0 < 5
        with DbMutex(storage_url, "other name", timeout_s=1):
            pass                                   # other names are independent
        os.kill(holder.pid, signal.SIGKILL)        # the server/kernel drops its lock
        holder.wait(timeout=10)
        with DbMutex(storage_url, "m", timeout_s=10) as m:
            assert m.held
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_mutex_is_reentrant_in_a_thread_and_excludes_other_threads(storage_url):
    import threading
    from study.dbmutex import DbMutex, MutexTimeout
    seen = []

    def other():
        try:
            DbMutex(storage_url, "r", timeout_s=0.3).acquire()
            seen.append("acquired")
        except MutexTimeout:
            seen.append("timeout")

    with DbMutex(storage_url, "r"):
        with DbMutex(storage_url, "r"):          # nested: no self-deadlock
            pass
        t = threading.Thread(target=other)        # still held after the inner release
        t.start()
        t.join()
    assert seen == ["timeout"]
    with DbMutex(storage_url, "r", timeout_s=1):
        pass


# -- the global per-night cap ---------------------------------------------------------------

def test_three_workers_run_exactly_the_cap(storage_url, tmp_path):
    from study.space import load_search_space
    procs = [start_worker(storage_url, tmp_path, i, "2030-01-01", 6, "--sleep", "0.3",
                          "--start-barrier", str(tmp_path / "start"), "--start-n", "3") for i in range(3)]
    outs = finish(procs)
    study = load(storage_url)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert all(t.user_attrs["night"] == "2030-01-01" for t in trials)
    ran = [n for o in outs for n in o["ran"]]
    assert sorted(ran) == list(range(6)), outs                  # no trial run twice, none lost
    assert sum(1 for o in outs if o["ran"]) >= 2, outs           # the workers really shared the night
    assert {t.user_attrs["worker"] for t in trials} == {f"{os.uname().nodename}:{o['pid']}" for o in outs if o["ran"]}
    # Warm start exactly once across workers: every config once, then the sampler.
    warm = load_search_space(ROOT / "search_space.yaml").warm_start_configs("proxy")
    for cfg in warm:
        assert sum(1 for t in trials if t.params == pytest.approx(cfg)) == 1, cfg
    # Only the warm start is "enqueued": the sampler's own trials carry no fixed_params.
    assert sum(1 for t in trials if "fixed_params" in t.system_attrs) == len(warm)
    promotion_chain(study, tmp_path / "adapters")
    for t in trials:
        r = t.user_attrs.get("rejudged")
        if r:
            assert r["first_against"] != r["against"] == t.user_attrs["baseline_id"]


def test_a_second_night_gets_its_own_cap_and_a_full_night_gets_none(pg_url, tmp_path):
    run_worker(pg_url, tmp_path, 0, "n1", 2, "--sleep", "0")
    outs = [run_worker(pg_url, tmp_path, 1, "n1", 2, "--sleep", "0"),
            run_worker(pg_url, tmp_path, 2, "n2", 3, "--sleep", "0")]
    assert outs[0]["ran"] == [] and len(outs[1]["ran"]) == 3
    study = load(pg_url)
    assert sorted(t.user_attrs["night"] for t in study.trials) == ["n1", "n1", "n2", "n2", "n2"]


def test_run_night_stops_on_study_stop_and_on_keep_going(tmp_path):
    from study.storage import open_storage, open_study
    from study.workers import run_night
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(open_storage(url), STUDY, n_startup_trials=4)
    f = lambda t: t.suggest_float("x", 0, 1)  # noqa: E731
    stop_after_one = lambda s, t: s.stop()  # noqa: E731
    assert run_night(study, url, "n1", 5, f, callbacks=[stop_after_one]) == [0]
    calls = iter([True, True, False])
    assert run_night(study, url, "n1", 5, f, keep_going=lambda: next(calls)) == [1, 2]
    assert run_night(study, url, "n1", 5, f, warm_start_configs=[{"x": 0.25}]) == [3, 4]
    assert [t.params["x"] for t in study.trials][3] == 0.25


# -- promotion: compare-and-swap ------------------------------------------------------------

def test_two_workers_clear_the_gate_at_once_exactly_one_promotes(pg_url, tmp_path):
    barrier = tmp_path / "barrier"
    env = {"AUTORESEARCH_TEST_GATE_BARRIER": str(barrier), "AUTORESEARCH_TEST_GATE_BARRIER_N": "2"}
    outs = finish([start_worker(pg_url, tmp_path, i, "n1", 2, "--level", "0.8", "--sleep", "0", env=env)
                   for i in range(2)])
    assert sorted(len(o["ran"]) for o in outs) == [1, 1]
    assert len(list(barrier.iterdir())) == 2                    # both were held at the decision
    study = load(pg_url)
    kept = promotion_chain(study, tmp_path / "adapters")
    assert len(kept) == 1
    winner = kept[0].user_attrs["experiment_id"]
    (loser,) = [t for t in study.trials if t.number != kept[0].number]
    assert loser.user_attrs["rejudged"] == {"first_against": "base", "first_result": "kept",
                                            "against": winner, "result": "reverted"}
    assert loser.user_attrs["result"] == "reverted" and loser.user_attrs["baseline_id"] == winner
    assert "promoted_against" not in loser.user_attrs
    # Every worker's `current` followed the one promotion.
    assert all(o["followed"] == [winner] for o in outs)


def _ask(study: optuna.Study, exp_id: str) -> optuna.Trial:
    trial = study.ask()
    trial.set_user_attr("experiment_id", exp_id)
    return trial


def _adapter(tmp: Path, exp_id: str) -> Path:
    (tmp / exp_id).mkdir(parents=True)
    (tmp / exp_id / "adapters.safetensors").write_bytes(exp_id.encode())
    return tmp / exp_id


def test_a_loser_still_better_than_the_new_baseline_is_promoted_on_it(pg_url, tmp_path):
    import warnings
    from study.gate import GateConfig, judge
    from study.promoter import Promoter
    from study.storage import open_storage, open_study
    from study.workers import Candidate, SharedBaseline, promote_cas
    warnings.simplefilter("ignore")             # ask() outside optimize() warns about heartbeat
    study = open_study(open_storage(pg_url), STUDY, n_startup_trials=4)
    promoter = Promoter(tmp_path / "adapters")
    baselines = SharedBaseline(study, pg_url, "k", lambda: synthetic_eval(0.3))
    gate = GateConfig(bootstrap_samples=200)

    def decide(trial, exp_id, ev, verdict, against, moving=True):
        return promote_cas(study, pg_url, Candidate(trial, exp_id, ev, verdict, against),
                           rejudge=lambda b: judge(ev, b, gate), baselines=baselines, moving=moving,
                           promote=lambda v: promoter.promote(_adapter(tmp_path, exp_id), exp_id))

    ev = {x: synthetic_eval(level) for x, level in (("a", 0.6), ("b", 0.8), ("c", 0.81))}
    trials = {x: _ask(study, f"exp-{x}") for x in ev}
    base = baselines.current()
    assert baselines.judged[0] == "base"
    first = {x: judge(ev[x], base, gate) for x in ev}            # all three judged against the base
    assert all(v.kept for v in first.values())
    out_a = decide(trials["a"], "exp-a", ev["a"], first["a"], "base")
    out_b = decide(trials["b"], "exp-b", ev["b"], first["b"], "base")
    out_c = decide(trials["c"], "exp-c", ev["c"], first["c"], "base")
    assert (out_a.result, out_a.rejudged) == ("kept", False)
    assert (out_b.result, out_b.rejudged, out_b.against) == ("kept", True, "exp-a")   # 0.8 >= 0.6 + 0.02
    assert (out_c.result, out_c.rejudged, out_c.against) == ("reverted", True, "exp-b")  # 0.81 < 0.82
    assert study.user_attrs["baseline"]["id"] == "exp-b" == promoter.current_id()
    assert study.user_attrs["baseline"]["previous"] == "exp-a"
    frozen = {t.user_attrs["experiment_id"]: t for t in study.trials}
    assert frozen["exp-b"].user_attrs["promoted_against"] == "exp-a"
    assert frozen["exp-c"].user_attrs["rejudged"]["against"] == "exp-b"
    # The new baseline is rebuilt from the database alone, by any worker.
    assert baselines.current()["overall"] == pytest.approx(ev["b"]["overall"])
    # baseline_policy "fixed": the gate's baseline never moves, so nothing is re-judged.
    d = _ask(study, "exp-d")
    out_d = decide(d, "exp-d", ev["a"], judge(ev["a"], base, gate), "base", moving=False)
    assert (out_d.result, out_d.rejudged) == ("kept", False)


def test_eval_summary_is_compact_and_judges_like_the_full_eval():
    from study.gate import GateConfig, judge
    from study.workers import eval_from_summary, eval_summary
    cand, base = synthetic_eval(0.61), synthetic_eval(0.5)
    base["cases"][0]["score"] = 0.123456789          # per-case detail survives
    summary = eval_summary(base)
    assert len(json.dumps(summary)) < 20_000 and len(summary["cases"]) == 210
    cfg = GateConfig(bootstrap_samples=300, require_p=0.9, category_p_floor=0.05)
    a, b = judge(cand, base, cfg), judge(cand, eval_from_summary(summary), cfg)
    assert (a.result, a.reasons, a.per_category) == (b.result, b.reasons, b.per_category)
    assert b.holdout == a.holdout


# -- heartbeat on PostgreSQL ----------------------------------------------------------------

def test_a_killed_worker_trial_is_failed_by_heartbeat_and_retried(pg_url, tmp_path):
    hang = tmp_path / "hang"
    hb = ("--heartbeat", "1", "--grace", "2")
    victim = start_worker(pg_url, tmp_path, 0, "n1", 2, "--hang-file", str(hang), *hb)
    try:
        deadline = time.monotonic() + 60
        while not hang.exists():
            assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()
            time.sleep(0.1)
    finally:
        victim.kill()                      # SIGKILL: no finally, no tell(), only the heartbeat stops
        victim.wait()
    time.sleep(3.5)                        # > grace period
    out = run_worker(pg_url, tmp_path, 1, "n1", 2, *hb)
    assert out["ran"] == [1]               # the cap counts the dead trial: one retry, no more
    t0, t1 = sorted(load(pg_url).trials, key=lambda t: t.number)
    assert t0.state.name == "FAIL" and t1.state.name == "COMPLETE"
    assert t1.system_attrs["failed_trial"] == 0 and t1.params == t0.params
    assert t0.user_attrs["night"] == t1.user_attrs["night"] == "n1"


def test_a_dropped_connection_is_replaced_between_trials(pg_url):
    """A 30-minute trial outlives idle connections (server restarts, NAT timeouts):
    open_storage's pool_pre_ping replaces a dead pooled connection instead of failing."""
    import sqlalchemy
    from study.storage import open_storage, open_study
    study = open_study(open_storage(pg_url), STUDY, n_startup_trials=4)
    study.enqueue_trial({"x": 1})
    assert len(study.trials) == 1
    killer = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with killer.connect() as c:
        killed = c.execute(sqlalchemy.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    killer.dispose()
    assert killed >= 1
    study.set_user_attr("after", True)               # would raise OperationalError without pre-ping
    assert study.user_attrs["after"] is True and len(study.trials) == 1


# -- migration ------------------------------------------------------------------------------

def migrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.migrate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_migrate_sqlite_to_postgres_then_resume_there(pg_url, tmp_path, capsys):
    sqlite = f"sqlite:///{tmp_path / 'old.db'}"
    run_worker(sqlite, tmp_path, 0, "n1", 3, "--sleep", "0")
    out = migrate("--from", sqlite, "--to", pg_url)
    assert out.returncode == 0, out.stderr
    assert f"copied {STUDY}: 3 trials (3 complete)" in out.stdout
    old, new = load(sqlite), load(pg_url)
    assert [(t.number, t.params, t.value, t.user_attrs) for t in new.trials] == \
           [(t.number, t.params, t.value, t.user_attrs) for t in old.trials]
    assert new.user_attrs == old.user_attrs and new.user_attrs["baseline"]["id"] == "exp-h-002"
    # Resumed on PostgreSQL: numbering goes on, the warm start is not repeated, and the
    # next promotion is judged against the migrated baseline (its eval came along).
    res = run_worker(pg_url, tmp_path, 1, "n2", 2, "--sleep", "0")
    assert res["ran"] == [3, 4]
    new = load(pg_url)
    t3 = next(t for t in new.trials if t.number == 3)
    assert t3.user_attrs["baseline_id"] == "exp-h-002" and t3.user_attrs["result"] == "kept"
    assert t3.params == pytest.approx({**old.trials[0].params, "LEARNING_RATE": 2e-5})  # 4th warm start
    # The same study again: refused, nothing copied.
    from study.migrate import main as migrate_main
    assert migrate_main(["--from", sqlite, "--to", pg_url]) == 2
    assert "exists there already" in capsys.readouterr().err
    assert len(load(pg_url).trials) == 5


@pytest.mark.parametrize("args, needle", [
    (("--from", "sqlite:////nonexistent/x.db"), "no such SQLite file"),
    (("--study", "nope"), "--study nope: not in"),
    (("--to", "postgresql+psycopg2://test@127.0.0.1:1/x"), "--to 127.0.0.1:1/x: cannot open"),
])
def test_migrate_refuses_with_one_clear_line(pg_url, tmp_path, capsys, args, needle):
    from study.migrate import main as migrate_main
    sqlite = f"sqlite:///{tmp_path / 'old.db'}"
    optuna.create_study(study_name=STUDY, storage=sqlite).enqueue_trial({"x": 1})
    argv = dict(zip(["--from", "--to"], [sqlite, pg_url]))
    argv.update(dict(zip(args[0::2], args[1::2])))
    assert migrate_main([x for kv in argv.items() for x in kv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
