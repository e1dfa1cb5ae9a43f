"""Serving follows adapters/current, and answers as that adapter's eval recorded.

`ServingKeeper.ensure()` is called after every change of adapters/current (a trial's
promotion, a worker following the study, a rollback) and at the night's ends: it starts
the server on what `current` names now (a no-op when it already serves it), probes it
(study.probe), restarts once on a mismatch, and if the mismatch persists rolls back to the
adapter before and probes again. What it did comes back as a ServeReport; a server that
cannot be brought to answer correctly raises ServingError carrying that report.
"""
from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import optuna

from study.dbmutex import db_mutex
from study.probe import ProbeResult
from study.promoter import Promoter
from study.serving import Serving, ServingError

Prober = Callable[[str | None, dict | None, list], ProbeResult]


@dataclass
class ServeReport:
    adapter: str | None = None          # what adapters/current names after this call (None: base)
    started: bool = False
    probes: list[ProbeResult] = field(default_factory=list)
    rolled_back_from: str | None = None

    def lines(self) -> list[str]:
        out = [p.line() for p in self.probes]
        if self.rolled_back_from:
            out.append(f"rolled back {self.rolled_back_from} -> {self.adapter or 'base model'}: "
                       "the server did not answer as its eval recorded")
        return out


class ServingKeeper:
    def __init__(self, serving: Serving, promoter: Promoter, expected: Callable[[str | None], dict | None],
                 probe: Prober | None = None, rollback: Callable[[str], None] | None = None,
                 log: Callable[[str], None] = lambda line: None):
        self.serving, self.promoter, self.expected = serving, promoter, expected
        self.probe, self.rollback, self.log = probe, rollback, log

    def _check(self, report: ServeReport) -> bool:
        report.adapter = self.promoter.current_id()
        if self.probe is None:
            return True
        base = self.expected(None) if report.adapter is not None else None
        result = self.probe(report.adapter, self.expected(report.adapter), [base] if base else [])
        report.probes.append(result)
        self.log(result.line())
        return result.ok

    def ensure(self) -> ServeReport:
        report = ServeReport(adapter=self.promoter.current_id())
        if not self.serving.start():
            return report
        report.started = True
        if self._check(report):
            return report
        self.log("restarting council-mlx once after the probe's mismatch")
        self.serving.stop()
        self.serving.start()
        if self._check(report):
            return report
        bad = report.adapter
        if bad is None or self.rollback is None:
            raise ServingError(f"council-mlx does not answer as the eval of {bad or 'the base model'} recorded "
                               f"({report.probes[-1].line()})", report)
        self.rollback(bad)
        report.rolled_back_from = bad
        self.log(f"rolled back {bad} -> {self.promoter.current_id() or 'base model'}")
        self.serving.start()
        if self._check(report):
            return report
        raise ServingError(f"council-mlx does not answer as recorded even after rolling {bad} back "
                           f"({report.probes[-1].line()})", report)


def expected_eval(promoter: Promoter, base_eval: Callable[[], Path | None]) -> Callable[[str | None], dict | None]:
    """adapter id -> the eval_results that adapter recorded here (None: the base model's)."""
    from evaluation import read_eval_results

    def read(adapter: str | None) -> dict | None:
        path = base_eval() if adapter is None else promoter.promoted / adapter / "eval_results.json"
        return read_eval_results(path) if path is not None and path.exists() else None
    return read


def record_rollback(study: optuna.Study, promoter: Promoter, storage_url: str, bad: str, why: str) -> str | None:
    """Roll `current` back from `bad` (to the base model when nothing came before it) and
    make the study's promoted baseline say so, so that no worker follows `bad` again.
    Returns the adapter now current (None: the base model)."""
    from study.follow import _score_of
    with db_mutex(storage_url, f"promote:{study.study_name}"):
        if promoter.current_id() == bad:
            promoter.rollback(to_base=True)
        cur = promoter.current_id()
        attr = {"id": cur, "previous": bad, "rolled_back": why, "host": socket.gethostname(),
                "adapter": str(promoter.promoted / cur) if cur else ""}
        if cur is not None:
            attr["score"], attr["trial"] = _score_of(study, promoter, cur)
        study.set_user_attr("baseline", attr)
    return cur


class NightServing:
    """The night's use of the keeper: serving paused around each trial, every start probed,
    what happened recorded on the trial (user attrs `serving`, `serving_down_s`, and
    `serving_error`) and in the trial log, and the first serving failure kept in `failed`
    for the night to stop on. Never raises for serving's sake: a finished trial keeps its
    eval and verdict whatever serving does afterwards."""

    def __init__(self, keeper: ServingKeeper, log_trial: Callable[[optuna.Trial, str], None] = lambda t, line: None,
                 echo: Callable[[str], None] = lambda line: None):
        self.keeper, self.log_trial, self.echo = keeper, log_trial, echo
        self.failed: str | None = None
        self.notes: list[str] = []          # every probe and rollback of the night, for the report

    def serve(self, trial: optuna.Trial | None = None) -> ServeReport | None:
        error = None
        try:
            report = self.keeper.ensure()
        except ServingError as exc:
            report, error = exc.report, str(exc)
        except Exception as exc:  # noqa: BLE001 - a rollback's database or file error is a serving failure too
            report, error = None, f"{type(exc).__name__}: {exc}"
        if error is None and report is not None and report.rolled_back_from:
            # Served correctly now, but the serving stack lost a promotion: the night stops and says so.
            error = (f"{report.rolled_back_from} did not answer as its eval recorded and was rolled back; "
                     f"serving {report.adapter or 'the base model'}, which does")
        lines = (report.lines() if report is not None else []) + ([f"serving error: {error}"] if error else [])
        for line in lines:   # a trial's log echoes its lines itself when progress bars are off
            (self.echo(line) if trial is None else self.log_trial(trial, line))
        self.notes += lines
        self.failed = self.failed or error
        if trial is not None:
            _record(trial, report, error)
        return report

    def append_to_report(self, report: Path) -> None:
        """The night's probes and rollbacks, under the morning report."""
        if self.notes and report.exists():
            from common.atomic import atomic_write_text
            atomic_write_text(report, report.read_text() + "\n## Serving\n\n" + "".join(f"- {n}\n" for n in self.notes))

    @contextlib.contextmanager
    def paused(self, trial: optuna.Trial) -> Iterator[None]:
        down = time.monotonic()
        self.keeper.serving.stop()
        try:
            yield
        finally:
            self.serve(trial)
            trial.set_user_attr("serving_down_s", round(time.monotonic() - down, 1))


def _record(trial: optuna.Trial, report: ServeReport | None, error: str | None) -> None:
    if report is not None and report.started:
        trial.set_user_attr("serving", {"adapter": report.adapter, "probes": [p.as_attr() for p in report.probes],
                                        "rolled_back_from": report.rolled_back_from})
    if error:
        trial.set_user_attr("serving_error", error[:500])
    bad = report.rolled_back_from if report is not None else None
    if bad is None:
        return
    why = (f"served after promotion, {bad} did not answer as its eval recorded "
           f"({report.probes[-2].matched if len(report.probes) > 1 else 0} of the probe's answers matched): "
           f"rolled back to {report.adapter or 'the base model'}")
    trial.set_user_attr("reasons", [*trial.user_attrs.get("reasons", []), why])
    if trial.user_attrs.get("experiment_id") == bad:
        trial.set_user_attr("result", "rolled_back")


def night_serving(serving: Serving, settings, council_path: Path, study: optuna.Study, promoter: Promoter,
                  storage_url: str, base_eval: Path, **kw) -> NightServing:
    """A night's NightServing: probed through [serving] host:port unless nothing is served
    here; a persistent mismatch rolls back and records it in the study."""
    from study.probe import Probe
    s = settings.serving
    probe = None if s.backend == "none" else Probe(f"http://{s.host}:{s.port}", council_path)
    keeper = ServingKeeper(serving, promoter, expected_eval(promoter, lambda: base_eval), probe=probe,
                           rollback=lambda bad: record_rollback(study, promoter, storage_url, bad, "probe"))
    return NightServing(keeper, **kw)


def serving_model(settings) -> Path:
    """The base model folder serving loads (the demo's is built on first use)."""
    if settings.is_demo or settings.modes.proxy.model == "demo":
        from demo import ensure_model
        return ensure_model(settings.demo.model, settings.path(settings.paths.cache), settings.root / "council.yaml",
                            pretrain_seconds=settings.demo.pretrain_s, progress=False).model_dir
    return Path(settings.modes.proxy.local_model).expanduser()


def base_eval_path(settings, model_dir: Path) -> Path:
    """Where the night caches the base model's eval (study.runner.BaselineKeeper)."""
    from evaluation import model_sha256
    return settings.path(settings.paths.cache) / "baseline" / model_sha256(model_dir)[:16] / "eval_results.json"
