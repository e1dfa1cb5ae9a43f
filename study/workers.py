"""Several workers on one study (several machines, or several processes): the per-night
trial cap is global, warm start runs once, and promotion is a compare-and-swap.

Slots (the global cap). Under the mutex `slots:<study>`, a worker counts tonight's
claimed trials (user attr `night`, any state but WAITING); below the cap it takes the
oldest WAITING trial (a heartbeat retry, a queued config) or queues the next warm-start
config nobody has run, else a trial without fixed params (the sampler fills it), and
claims it (WAITING → RUNNING, tagged `night` and `worker`, one heartbeat) before letting
the mutex go. `run_slot` then runs exactly that trial through `study.optimize(n_trials=1)`.
Claiming under the mutex, not popping in optimize, is what makes the count exact: a trial
is counted the moment it is claimed, and a retry copy queued by another worker's
heartbeat check can never be popped by a worker that reserved something else. (Two
Optuna internals are relied on, and tests/test_postgres.py fails if they change:
`Study._pop_waiting_trial_id`, which ask() calls, and `Study._stop_flag`.)

Promotion (compare-and-swap). The study user attr `baseline` = {id, score, trial, ...} is
the shared truth of what is promoted. Under the mutex `promote:<study>` a kept candidate
re-reads it: still the baseline its verdict was judged against → promote and move it;
moved → re-judge against the new baseline, rebuilt from the database alone (the promoted
trial's `eval_summary` user attr), and promote only if that verdict is still "kept".
"""
from __future__ import annotations

import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from common.errors import ConfigError
from study.dbmutex import DEFAULT_TIMEOUT_S, DbMutex
from study.gate import Verdict
from study.promoter import _Pauser

NIGHT = "night"                   # trial user attr: the night the trial was claimed for
BASELINE = "baseline"             # study user attr: what is promoted now
EVAL_SUMMARY = "eval_summary"     # trial user attr of a promoted trial
BASE_ID = "base"                  # the baseline id when nothing is promoted
BARRIER_ENV, BARRIER_N_ENV = "AUTORESEARCH_TEST_GATE_BARRIER", "AUTORESEARCH_TEST_GATE_BARRIER_N"
BARRIER_TIMEOUT_S = 300.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- slots: the global per-night cap --------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    trial_id: int
    number: int
    source: str          # "queued" (a retry or an earlier queued trial) | "warm_start" | "sampler"
    night: str


def tonight(trials: Iterable[FrozenTrial], night: str) -> list[FrozenTrial]:
    """Trials claimed for this night (a WAITING trial is not claimed yet)."""
    return [t for t in trials if t.user_attrs.get(NIGHT) == night and t.state != TrialState.WAITING]


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(math.isclose(float(a[k]), float(b[k]), rel_tol=1e-9, abs_tol=1e-12) for k in a)


def next_warm_start(trials: Sequence[FrozenTrial], configs: Sequence[dict]) -> dict | None:
    """The first warm-start config no trial of the study has run or queued (once per study)."""
    seen = [t.system_attrs.get("fixed_params", t.params) for t in trials]
    for cfg in configs:
        if not any(_same(dict(cfg), dict(p)) for p in seen):
            return dict(cfg)
    return None


def _queue(study: optuna.Study, params: dict | None, night: str, user_attrs: dict | None = None) -> int:
    """study.enqueue_trial(params, user_attrs={night, ...}), returning the new trial's id. With
    no params, no `fixed_params` either: samplers read that attr as "an enqueued config"
    (study/sampler.py skips its own moves for those)."""
    template = optuna.trial.create_trial(state=TrialState.WAITING,
                                         system_attrs={"fixed_params": params} if params else {},
                                         user_attrs={NIGHT: night, **(user_attrs or {})})
    return study._storage.create_new_trial(study._study_id, template_trial=template)


def _claim(study: optuna.Study, trial_id: int, night: str, worker: str) -> bool:
    storage = study._storage
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
            return False          # taken by a process outside this protocol
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    storage.set_trial_user_attr(trial_id, NIGHT, night)
    storage.set_trial_user_attr(trial_id, "worker", worker)
    if storage.get_heartbeat_interval() is not None:
        # A worker killed before optimize() starts its heartbeat still leaves a stale,
        # retried trial instead of a RUNNING one forever.
        storage.record_heartbeat(trial_id)
    return True


def reserve_slot(study: optuna.Study, storage_url: str, night: str, cap: int,
                 warm_start_configs: Sequence[dict] = (), worker: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> Slot | None:
    """Claim tonight's next trial for this worker, or None when the study's cap is reached."""
    worker = worker or worker_id()
    with DbMutex(storage_url, f"slots:{study.study_name}", timeout_s):
        # Trials of a dead worker become FAIL and queue their retry now, so the retry is
        # the next trial claimed instead of waiting behind tonight's new ones.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if len(tonight(trials, night)) >= cap:
            return None
        for t in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
            if _claim(study, t._trial_id, night, worker):
                return Slot(t._trial_id, t.number, "queued", night)
        cfg = next_warm_start(trials, warm_start_configs)
        trial_id = _queue(study, cfg, night)
        if not _claim(study, trial_id, night, worker):
            raise RuntimeError(f"trial id {trial_id} was taken while {worker} held the slots lock")
        number = study._storage.get_trial_number_from_id(trial_id)
        return Slot(trial_id, number, "warm_start" if cfg else "sampler", night)


def run_slot(study: optuna.Study, slot: Slot, func: Callable[[optuna.Trial], float], *,
             callbacks: Sequence[Callable] = (), catch: tuple[type[Exception], ...] = (),
             gc_after_trial: bool = True) -> None:
    """study.optimize(n_trials=1) on exactly the claimed trial (heartbeat, tell, callbacks
    and `catch` as usual). optimize() would pop the oldest WAITING trial, which may not
    be ours, so its pop is pointed at the claimed one for this call."""
    def pop() -> int:
        return slot.trial_id
    study._pop_waiting_trial_id = pop          # instance attribute, shadows Study's method
    try:
        study.optimize(func, n_trials=1, callbacks=list(callbacks), catch=catch, gc_after_trial=gc_after_trial)
    finally:
        del study._pop_waiting_trial_id


def stop_requested(study: optuna.Study) -> bool:
    """Whether a callback called study.stop() during the last optimize()."""
    return bool(getattr(study, "_stop_flag", False))


def run_night(study: optuna.Study, storage_url: str, night: str, cap: int,
              func: Callable[[optuna.Trial], float], *, warm_start_configs: Sequence[dict] = (),
              callbacks: Sequence[Callable] = (), catch: tuple[type[Exception], ...] = (),
              keep_going: Callable[[], bool] = lambda: True, worker: str | None = None,
              before_slot: Callable[[], Any] = lambda: None) -> list[int]:
    """Run trials until the study's cap for this night is reached, keep_going() says no
    (the deadline), or a callback calls study.stop(). Returns the numbers this worker ran.
    before_slot() may queue the next trial (study/proposer.py) before one is claimed."""
    ran: list[int] = []
    while keep_going():
        before_slot()
        slot = reserve_slot(study, storage_url, night, cap, warm_start_configs, worker)
        if slot is None:
            break
        ran.append(slot.number)
        run_slot(study, slot, func, callbacks=callbacks, catch=catch)
        if stop_requested(study):
            break
    return ran


# -- eval summaries in the database ---------------------------------------------------------

def eval_summary(evaluated: dict) -> dict:
    """What the gate needs of an eval, compact enough for a user attr (~210 cases, ~15 kB):
    overall, per_category, per_agent, holdout overall, cases {id: [score, split, category]}.
    Scores are kept exact: a worker judging against it gets the numbers the trainer got."""
    out: dict[str, Any] = {k: evaluated.get(k) for k in ("overall", "per_category", "per_agent")}
    hold = evaluated.get("holdout")
    if isinstance(hold, dict) and hold.get("overall") is not None:
        out["holdout"] = {"overall": hold["overall"]}
    out["cases"] = {str(c["id"]): [float(c["score"]), c.get("split"), c.get("category")]
                    for c in evaluated.get("cases") or []}
    return out


def eval_from_summary(summary: dict) -> dict:
    """The eval dict judge() and the report read, rebuilt from eval_summary()."""
    ev = {k: summary.get(k) for k in ("overall", "per_category", "per_agent")}
    if summary.get("holdout"):
        ev["holdout"] = dict(summary["holdout"])
    ev["cases"] = [{"id": cid, "score": s, "split": split, "category": cat}
                   for cid, (s, split, cat) in summary.get("cases", {}).items()]
    return ev


# -- the shared baseline --------------------------------------------------------------------

@dataclass(frozen=True)
class BaselineRef:
    id: str
    score: float | None = None
    trial: int | None = None
    eval: dict | None = None           # None: the promoted trial has no eval_summary (legacy)
    host: str = ""
    adapter: str = ""                  # the promoted folder on `host`
    raw: dict = field(default_factory=dict)


def _fresh_study_attrs(study: optuna.Study) -> dict:
    return study._storage.get_study_user_attrs(study._study_id)


def _trial_by_number(study: optuna.Study, number: int) -> FrozenTrial:
    tid = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return study._storage.get_trial(tid)


def read_baseline(study: optuna.Study) -> BaselineRef | None:
    """What is promoted now, from the database; None when nothing is."""
    raw = _fresh_study_attrs(study).get(BASELINE)
    if not raw or not raw.get("id"):
        return None
    number = raw.get("trial")
    trial = None
    if number is not None:
        trial = _trial_by_number(study, int(number))
    else:   # promoted by a single-machine night: find the trial by its experiment id
        trial = next((t for t in study.get_trials(deepcopy=False)
                      if t.user_attrs.get("experiment_id") == raw["id"]), None)
    summary = trial.user_attrs.get(EVAL_SUMMARY) if trial is not None else None
    return BaselineRef(id=str(raw["id"]), score=raw.get("score"),
                       trial=trial.number if trial is not None else None,
                       eval=eval_from_summary(summary) if summary else None,
                       host=str(raw.get("host", "")), adapter=str(raw.get("adapter", "")), raw=dict(raw))


def shared_base_eval(study: optuna.Study, storage_url: str, key: str, compute: Callable[[], dict],
                     timeout_s: float = 3600.0) -> dict:
    """The base model's eval, computed by one worker for all of them and kept in the study
    (attr `base_eval:<key>`), so every machine judges against the same numbers."""
    attr = f"base_eval:{key}"
    cached = _fresh_study_attrs(study).get(attr)
    if cached:
        return eval_from_summary(cached)
    with DbMutex(storage_url, f"base-eval:{study.study_name}:{key}", timeout_s):
        cached = _fresh_study_attrs(study).get(attr)
        if not cached:
            cached = eval_summary(compute())
            study.set_user_attr(attr, cached)
    return eval_from_summary(cached)


class SharedBaseline:
    """The eval every candidate is judged against, read fresh from the database each time:
    the promoted trial's eval_summary, else the base model's (shared_base_eval).
    `judged` is (id, eval) of the last current(): the baseline the gate's verdict used.
    `fixed` pins the first baseline for the study's life (study attr `fixed_baseline`)."""

    def __init__(self, study: optuna.Study, storage_url: str, base_key: str,
                 compute_base: Callable[[], dict], policy: str = "ratchet",
                 legacy_eval: Callable[[str], dict | None] = lambda exp_id: None):
        self.study, self.url, self.base_key, self.policy = study, storage_url, base_key, policy
        self.compute_base, self.legacy_eval = compute_base, legacy_eval
        self.judged: tuple[str, dict] | None = None

    def base(self) -> dict:
        return shared_base_eval(self.study, self.url, self.base_key, self.compute_base)

    def eval_of(self, ref: BaselineRef | None) -> tuple[str, dict]:
        if ref is None:
            return BASE_ID, self.base()
        ev = ref.eval if ref.eval is not None else self.legacy_eval(ref.id)
        if ev is None:
            # State, not a bug: one line and exit 2, with what to do.
            raise ConfigError(None, "baseline", f"the study's promoted adapter {ref.id} has no eval_summary in "
                              f"the study and no eval_results.json here: restore adapters/promoted/{ref.id}, "
                              "or repoint adapters/current (python -m study.promote --use ID) and rerun")
        return ref.id, ev

    def current(self) -> dict:
        ref = read_baseline(self.study)
        if self.policy == "fixed":
            pinned = _fresh_study_attrs(self.study).get("fixed_baseline")
            if not pinned:
                pinned = {"id": ref.id if ref else BASE_ID}
                self.study.set_user_attr("fixed_baseline", pinned)
            ref = None if pinned["id"] == BASE_ID else (
                ref if ref is not None and ref.id == pinned["id"] else _ref_for_id(self.study, pinned["id"]))
        self.judged = self.eval_of(ref)
        return self.judged[1]


def _ref_for_id(study: optuna.Study, exp_id: str) -> BaselineRef:
    trial = next(t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("experiment_id") == exp_id)
    summary = trial.user_attrs.get(EVAL_SUMMARY)
    return BaselineRef(id=exp_id, trial=trial.number, eval=eval_from_summary(summary) if summary else None)


# -- promotion, compare-and-swap ------------------------------------------------------------

@dataclass
class Candidate:
    trial: optuna.Trial
    exp_id: str
    evaluated: dict
    verdict: Verdict                 # the gate's verdict ...
    judged_against: str              # ... against this baseline id (BASE_ID: the base model)


@dataclass(frozen=True)
class CasOutcome:
    result: str                      # "kept" when promoted
    verdict: Verdict                 # the verdict that decided: the re-judged one if rejudged
    against: str                     # the baseline id that verdict was judged against
    rejudged: bool
    promoted: Path | None = None


def gate_barrier() -> None:
    """Test hook: hold every worker here until N of them arrived, so they decide at once."""
    folder = os.environ.get(BARRIER_ENV)
    if not folder:
        return
    n = int(os.environ.get(BARRIER_N_ENV, "2"))
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / str(os.getpid())).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(Path(folder).iterdir())) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate barrier {folder}: fewer than {n} workers arrived")
        time.sleep(0.02)


def _record_rejudge(trial: optuna.Trial, first: Verdict, first_against: str, v: Verdict, against: str,
                    evaluated: dict, base_eval: dict) -> None:
    """The trial's attrs tell the verdict that decided, and that it was a second one."""
    base_cat = base_eval.get("per_category") or {}
    trial.set_user_attr("delta_per_category", {c: round(x - base_cat[c], 4) for c, x in
                                               (evaluated.get("per_category") or {}).items() if c in base_cat})
    trial.set_user_attr("rejudged", {"first_against": first_against, "first_result": first.result,
                                     "against": against, "result": v.result})
    trial.set_user_attr("baseline_id", against)
    trial.set_user_attr("baseline", round(v.baseline, 4) if v.baseline is not None else None)
    trial.set_user_attr("p_better", v.p_better)
    trial.set_user_attr("reasons", [f"re-judged: the baseline moved from {first_against} to {against} "
                                    "while this trial was judged", *v.reasons])
    trial.set_user_attr("stats", v.stats())
    trial.set_user_attr("feasible", v.feasible)
    # set_constraint() keeps the first value; the new baseline's regression is the true one.
    for key, value in v.constraints.items():
        trial.storage.set_trial_system_attr(trial._trial_id, f"constraints:{key}", float(value))


def promote_cas(study: optuna.Study, storage_url: str, cand: Candidate, *,
                rejudge: Callable[[dict], Verdict], promote: Callable[[Verdict], Path | None],
                baselines: SharedBaseline, moving: bool = True,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> CasOutcome:
    """Promote a kept candidate only if the baseline it was judged against is still the
    promoted one; else re-judge it against the new one (rejudge(eval) -> Verdict) and
    promote only if still kept. `promote(verdict)` (the deciding verdict) copies the adapter
    and repoints `current` (Promoter.promote); it runs under the mutex, so promotions
    never interleave.
    moving=False (baseline_policy "fixed"): the gate's baseline never moves, no re-judge."""
    gate_barrier()
    with DbMutex(storage_url, f"promote:{study.study_name}", timeout_s):
        ref = read_baseline(study)
        current = ref.id if ref is not None else BASE_ID
        verdict, against, rejudged = cand.verdict, cand.judged_against, False
        if moving and current != cand.judged_against:
            against, base_eval = baselines.eval_of(ref)
            verdict, rejudged = rejudge(base_eval), True
            _record_rejudge(cand.trial, cand.verdict, cand.judged_against, verdict, against,
                            cand.evaluated, base_eval)
        if not verdict.kept:
            return CasOutcome(verdict.result, verdict, against, rejudged)
        # The eval first, then the files, then the pointer: a worker that reads the new
        # baseline can always rebuild its eval from the database.
        cand.trial.set_user_attr(EVAL_SUMMARY, eval_summary(cand.evaluated))
        cand.trial.set_user_attr("promoted_against", current)
        dest = promote(verdict)
        _Pauser()("baseline")   # test-only kill point (AUTORESEARCH_TEST_PROMOTE_PAUSE); a no-op otherwise
        study.set_user_attr(BASELINE, {
            "id": cand.exp_id, "score": verdict.score, "trial": cand.trial.number, "previous": current,
            "worker": worker_id(), "host": socket.gethostname(), "adapter": str(dest or ""),
            "promoted_at": datetime.now().astimezone().isoformat(timespec="seconds")})
        return CasOutcome("kept", verdict, against, rejudged, dest)
