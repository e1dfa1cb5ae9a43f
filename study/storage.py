"""The persistent Optuna study: storage, naming, sampler, pruner, crash recovery."""
from __future__ import annotations

import os
import re
import socket
import sqlite3
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from common.errors import ConfigError
from common.procs import pid_alive
from study.dbmutex import schema_lock

# Heartbeat and the retry callback are "experimental" in Optuna 5 but documented as the
# way to recover from killed trials; the warning would print every night.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_name(prefix: str, mode: str, model: str) -> str:
    """One study per mode and base model (an adapter only means something on its base)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-") or "model"
    return f"{prefix}-{mode}-{slug}"


def _prepare_sqlite(url: str) -> None:
    """WAL lets optuna-dashboard read while a trial writes; it persists in the file."""
    path = url.removeprefix("sqlite:///")
    if path == ":memory:":
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def open_storage(url: str, *, heartbeat_interval: int = 60, grace_period: int = 180,
                 max_retry: int = 1) -> RDBStorage:
    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        # 30-minute trials outlive idle connections; pre-ping replaces dead ones.
        engine_kwargs["pool_pre_ping"] = True
    try:
        if url.startswith("sqlite"):
            _prepare_sqlite(url)     # a corrupt file fails here: one line, not a traceback
        # Several workers opening a fresh database at once would race creating the tables.
        with schema_lock(url):
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
    except Exception as exc:  # sqlalchemy's errors are long; keep the cause
        raise ConfigError("autoresearch.toml", "study.storage",
                          f"cannot open {url.split('@')[-1]!r}: {' '.join(str(exc).split())[:300]}") from None


def make_sampler(n_startup_trials: int, space=None, mode: str = "proxy") -> optuna.samplers.BaseSampler:
    """The Council's policy (study/sampler.py) when the search space is known; plain TPE for
    callers without one. No fixed seed: a resumed study with seed=0 would repeat the same
    random-phase params every night (DESIGN §4)."""
    if space is None:
        return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, multivariate=True,
                                          constant_liar=True)
    from study.sampler import default_sampler
    return default_sampler(space, mode, n_startup_trials=n_startup_trials)


def make_pruner() -> optuna.pruners.BasePruner:
    # Needs history: with 4 trials a night it starts pruning on the third night.
    # Divergence and NaN are stopped inside train_core and need no history.
    return optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=2, n_min_trials=3)


def open_study(storage: RDBStorage, name: str, *, n_startup_trials: int, space=None,
               mode: str = "proxy") -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                               load_if_exists=True, sampler=make_sampler(n_startup_trials, space, mode),
                               pruner=make_pruner())


def enqueue_warm_start(study: optuna.Study, configs: list[dict]) -> None:
    for cfg in configs:
        study.enqueue_trial(cfg, skip_if_exists=True)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def recover_local_trials(study: optuna.Study, max_retry: int = 1) -> list[int]:
    """RUNNING trials left by a dead nightly on THIS machine → FAIL, and retried.

    The heartbeat does the same across machines, but only after its grace period; this
    machine's lock proves no other nightly here owns them, so we need not wait.
    Called with the guard lock held.
    """
    host = socket.gethostname()
    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("worker", ""))
        h, _, pid = owner.rpartition(":")
        if h != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "killed")
        study._storage.set_trial_user_attr(t._trial_id, "result", "failed:killed")
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            retry(study, study._storage.get_trial(t._trial_id))
            failed.append(t.number)
    return failed
