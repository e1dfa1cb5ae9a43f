"""The Optuna objective: the only place where a trial meets training and evaluation.

One trial = suggest params → prepare data for its mix ratio → stop serving → train with
pruning → evaluate across the Council → gate → hand the verdict to the night (which
promotes) → serving starts again on whatever adapters/current names now, and is probed.
Serving stays down through the gate and the promotion (seconds) so that it starts once
per trial, with the adapter the Council should answer with. The night passes everything
it owns in a TrialContext, so this module needs nothing of study/ but the gate.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, ContextManager

import optuna

import train_core
from common.errors import ConfigError
from evaluation import EvalConfig, run_eval, write_eval_results
from study.gate import GateConfig, Verdict, judge


@dataclass
class TrialContext:
    mode: str
    model_dir: Path
    model_name: str
    suggest: Callable[[optuna.Trial], dict[str, Any]]
    prepare_data: Callable[[float], Any]          # DATA_MIX_RATIO → corpus.PreparedData
    experimental_root: Path
    council_path: Path
    budget_s: Callable[[], float]                 # training budget left for this trial
    baseline: Callable[[], dict | None]           # the baseline eval, read fresh at decision time
    on_verdict: Callable[[optuna.Trial, Verdict, dict, Path], str]  # promotes; returns the result
    gate: GateConfig = field(default_factory=GateConfig)
    train_defaults: dict[str, Any] = field(default_factory=dict)
    iters_scale: float = 1.0
    lr_scale: float = 1.0                          # the trained lr is LEARNING_RATE x this ([train] lr_scale)
    eval_max_tokens: int = 32
    eval_seed: int = 0
    prune: bool = True
    # Stops serving on entry; on exit starts it on adapters/current and probes it. Its exit
    # never raises for serving's sake: a finished trial keeps its eval and verdict, and the
    # night reads what serving did from the trial (user attr `serving_error`).
    pause_serving: Callable[[optuna.Trial], ContextManager] = lambda trial: contextlib.nullcontext()
    progress: bool = True
    log: Callable[[optuna.Trial, str], None] = lambda trial, line: None
    on_finish: Callable[[optuna.Trial, Path], None] = lambda trial, adapter_dir: None
    # Trains in a child process (an OOM segfault must not take the night down); full mode
    # passes a study.remote.RemoteTrainer. Called as run_training(spec, callbacks, progress=...).
    run_training: Callable[..., train_core.TrainResult] = train_core.run_training
    # Why these params must not run (an exact config that already ran out of memory), or None.
    known_oom: Callable[[dict[str, Any]], str | None] = lambda params: None
    # Evaluates here; full mode with eval_on = "node" passes a study.remote_eval.RemoteEvaluator.
    # Called as run_eval(EvalConfig, progress=...).
    run_eval: Callable[..., dict[str, Any]] = run_eval
    # Quick Council checks at the training checkpoints and the early veto on them, or None:
    # study.veto.EarlyVetoPlan, whose for_trial(trial, log) gives a TrainCallback with
    # .checks (for the spec), .vetoed(result) and .record(trial, result) -> the value.
    early_veto: Any = None


def record_comparison(eval_path: Path, evaluated: dict, verdict: Verdict, *, against: str | None = None) -> None:
    """The verdict into eval_results' `comparison` block (what the promoted copy carries);
    a re-judge against a newer baseline (`against`) replaces it and keeps the first one's
    result as `rejudged_from`."""
    first = evaluated.get("comparison")
    evaluated["comparison"] = {**verdict.stats(), "result": verdict.result, "reasons": list(verdict.reasons)}
    if against is not None and first:
        evaluated["comparison"].update(against=against, rejudged_from={"result": first.get("result"),
                                                                       "baseline": first.get("baseline")})
    write_eval_results(eval_path, evaluated)


class TrialFailed(Exception):
    """A trial that ended without a score; its reason is in the `result` user attr."""


class PruneOnValLoss(train_core.TrainCallback):
    """Reports -val_loss (the study maximises) at train_core's fixed steps."""

    def __init__(self, trial: optuna.Trial, enabled: bool, log: Callable[[optuna.Trial, str], None]):
        self.trial, self.enabled, self.log = trial, enabled, log

    def on_train_loss(self, step: int, loss: float, ctx) -> None:
        self.log(self.trial, f"step {step}: train loss {loss:.4f}")

    def on_val_loss(self, step: int, loss: float, ctx) -> None:
        self.log(self.trial, f"step {step}: val loss {loss:.4f}")
        if not math.isfinite(loss):
            return
        self.trial.report(-loss, step)
        if self.enabled and self.trial.should_prune():
            raise train_core.StopTraining("pruned")


def study_tag(study_name: str) -> str:
    """6 hex digits of the study's name: ids of two studies (the demo's and the real one, or
    after a base-model change) never meet in one adapters folder."""
    return hashlib.sha256(study_name.encode()).hexdigest()[:6]


def experiment_id(mode: str, number: int, when: datetime, study_name: str | None = None) -> str:
    tag = f"-{study_tag(study_name)}" if study_name else ""
    return f"exp-{when:%Y%m%d}-{mode}{tag}-{number:03d}"


EXP_ID = re.compile(r"^exp-(?P<date>\d{8})-(?P<mode>[a-z]+)(?:-(?P<study>[0-9a-f]{6}))?-(?P<number>\d+)$")


def parse_experiment_id(exp_id: str) -> dict[str, Any] | None:
    """{date, mode, study (6 hex, None for ids made before studies were tagged), number}."""
    m = EXP_ID.match(exp_id)
    if m is None:
        return None
    return {"date": m["date"], "mode": m["mode"], "study": m["study"], "number": int(m["number"])}


def trained_sizes(params: dict[str, Any], iters_scale: float, lr_scale: float) -> tuple[int, float]:
    """(iterations, learning rate) a trial really trains with: ITERS x iters_scale (at least
    one optimizer update) and LEARNING_RATE x lr_scale; the demo scales both ([train])."""
    iters = max(int(params["GRAD_ACCUM"]), int(round(params["ITERS"] * iters_scale)))
    return iters, float(params["LEARNING_RATE"]) * lr_scale


def train_spec(params: dict[str, Any], ctx: TrialContext, data_dir: Path, adapter_dir: Path,
               budget_s: float | None = None) -> train_core.TrainSpec:
    iters, lr = trained_sizes(params, ctx.iters_scale, ctx.lr_scale)
    return train_core.TrainSpec(
        model=str(ctx.model_dir),
        data_dir=str(data_dir),
        adapter_dir=str(adapter_dir),
        num_layers=int(params["NUM_LAYERS"]),
        lora_rank=int(params["LORA_RANK"]),
        lora_alpha=float(params["LORA_ALPHA"]),
        dropout=float(params["DROPOUT"]),
        learning_rate=lr,
        iters=iters,
        grad_accum=int(params["GRAD_ACCUM"]),
        max_seq_length=int(params["MAX_SEQ_LENGTH"]),
        budget_s=float(ctx.budget_s() if budget_s is None else budget_s),
        **ctx.train_defaults,
    )


def _fail(trial: optuna.Trial, reason: str, detail: str = "") -> TrialFailed:
    trial.set_user_attr("result", f"failed:{reason}")
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("feasible", False)
    trial.set_user_attr("reasons", [detail.strip().splitlines()[-1][:300]] if detail.strip() else [reason])
    if detail:
        trial.set_user_attr("fail_detail", detail[-2000:])
    return TrialFailed(f"{reason}: {detail.splitlines()[-1] if detail else ''}")


def _record_oom(trial: optuna.Trial, exc: train_core.OutOfMemory, ctx: TrialContext) -> float:
    """An OOM is knowledge, not a crash: a COMPLETE trial scored 0.0 with constraint
    `oom` > 0, so TPE ranks its region with the infeasible ones (a FAIL it would ignore)
    and best_trial skips it. Optuna reads a missing constraint key as no constraint, so
    the gate's keys need no stand-ins here."""
    _fail(trial, "oom", str(exc))
    trial.set_constraint("oom", 1.0)
    if exc.result is not None:
        trial.set_user_attr("iters_done", exc.result.iters_done)
        trial.set_user_attr("stopped_by", exc.result.stopped_by)
    ctx.log(trial, f"out of memory: {exc}")
    return 0.0


def objective(trial: optuna.Trial, ctx: TrialContext) -> float:
    started = time.time()
    now = datetime.now()
    params = ctx.suggest(trial)
    exp_id = experiment_id(ctx.mode, trial.number, now, trial.study.study_name)
    for k, v in {"experiment_id": exp_id, "timestamp": now.isoformat(timespec="seconds"),
                 "mode": ctx.mode, "model": ctx.model_name}.items():
        trial.set_user_attr(k, v)
    adapter_dir = ctx.experimental_root / exp_id
    ctx.log(trial, f"{exp_id} ({ctx.mode}, {ctx.model_name}): " + ", ".join(f"{k}={v:g}" for k, v in params.items()))
    try:
        known = ctx.known_oom(params)
        if known:
            trial.set_user_attr("oom_known_from", known)
            raise train_core.OutOfMemory(known)
        data = ctx.prepare_data(float(params["DATA_MIX_RATIO"]))
        trial.set_user_attr("data_hash", data.hash)
        with ctx.pause_serving(trial):
            budget = float(ctx.budget_s())
            trial.set_user_attr("budget_s", round(budget, 1))   # below [modes] budget_s: the night's shortened last trial
            if budget <= 0:
                # The deadline came closer while the trial started (serving stopped, data
                # prepared): nothing left to train with. Not bad input; the night stops here.
                raise _fail(trial, "deadline", "no training time left before the deadline")
            t0 = time.time()
            early = ctx.early_veto.for_trial(trial, ctx.log) if ctx.early_veto is not None else None
            spec = train_spec(params, ctx, data.dir, adapter_dir, budget)
            result = ctx.run_training(spec if early is None else replace(spec, checks=early.checks),
                                      [PruneOnValLoss(trial, ctx.prune, ctx.log), *([early] if early else [])],
                                      progress=ctx.progress)
            train_s = time.time() - t0
            ctx.log(trial, f"training: {result.iters_done} iters in {train_s:.1f} s, stopped by {result.stopped_by}, "
                           f"train loss {result.train_loss}, val loss {result.val_loss}")
            for k, v in {"train_loss": result.train_loss, "val_loss": result.val_loss,
                         "train_s": round(train_s, 2), "iters_done": result.iters_done,
                         "stopped_by": result.stopped_by, "learning_rate": spec.learning_rate,
                         "num_layers_effective": result.num_layers_effective}.items():
                trial.set_user_attr(k, v)
            if early is not None and early.vetoed(result):
                return early.record(trial, result)   # a doomed trial: no eval, never promoted
            if result.stopped_by == "callback:pruned":
                trial.set_user_attr("result", "pruned")
                trial.set_user_attr("reasons", [f"val loss {result.val_loss} worse than the median at the same step"])
                raise optuna.TrialPruned(f"val loss {result.val_loss}")
            if result.stopped_by in ("nan", "diverged"):
                raise _fail(trial, result.stopped_by, f"training stopped: {result.stopped_by}")
            t0 = time.time()
            evaluated = ctx.run_eval(EvalConfig(model=str(ctx.model_dir), adapter=str(adapter_dir),
                                            council_path=str(ctx.council_path),
                                            max_tokens=ctx.eval_max_tokens, seed=ctx.eval_seed),
                                 progress=ctx.progress)
            trial.set_user_attr("eval_s", round(time.time() - t0, 2))
            ctx.log(trial, f"eval: overall {evaluated['overall']:.4f} in {time.time() - t0:.1f} s; "
                           + ", ".join(f"{c} {v:.3f}" for c, v in evaluated["per_category"].items()))
            eval_path = adapter_dir / "eval_results.json"
            write_eval_results(eval_path, evaluated)
            trial.set_user_attr("eval_results", str(eval_path))
            trial.set_user_attr("per_category", evaluated["per_category"])
            trial.set_user_attr("per_agent", evaluated["per_agent"])
            if "holdout" in evaluated:
                trial.set_user_attr("holdout_score", evaluated["holdout"].get("overall"))

            verdict = judge(evaluated, ctx.baseline(), ctx.gate)
            trial.set_user_attr("stats", verdict.stats())
            record_comparison(eval_path, evaluated, verdict)
            for key, value in verdict.constraints.items():
                trial.set_constraint(key, value)
            trial.set_user_attr("feasible", verdict.feasible)
            trial.set_user_attr("score", round(verdict.score, 4))
            trial.set_user_attr("baseline", round(verdict.baseline, 4) if verdict.baseline is not None else None)
            trial.set_user_attr("p_better", verdict.p_better)
            trial.set_user_attr("reasons", list(verdict.reasons))
            final = ctx.on_verdict(trial, verdict, evaluated, adapter_dir)
            trial.set_user_attr("result", final)
            ctx.log(trial, f"verdict: {final}; " + "; ".join(verdict.reasons))
        return float(evaluated["overall"])
    except (optuna.TrialPruned, TrialFailed):
        raise
    except ConfigError as exc:
        # Bad input (e.g. two evals over different rubrics): no verdict, the night stops (exit 2).
        _fail(trial, "config", str(exc))
        raise
    except KeyboardInterrupt:
        # SIGTERM from launchd arrives as a KeyboardInterrupt subclass: record, then go on up.
        _fail(trial, "terminated")
        raise
    except train_core.OutOfMemory as exc:
        return _record_oom(trial, exc, ctx)
    except train_core.RemoteLost as exc:
        raise _fail(trial, "remote_lost", str(exc)) from exc
    except OSError as exc:
        import errno
        reason = "disk_full" if exc.errno == errno.ENOSPC else "os_error"
        raise _fail(trial, reason, traceback.format_exc()) from exc
    except Exception as exc:
        raise _fail(trial, type(exc).__name__, traceback.format_exc()) from exc
    finally:
        trial.set_user_attr("elapsed_s", round(time.time() - started, 1))
        ctx.on_finish(trial, adapter_dir)
