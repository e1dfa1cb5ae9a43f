"""The night, once planned: build what it needs, run the trials, report.

Kept apart from study/nightly.py so the CLI (and --dry-run) import nothing heavy.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState
from rich.console import Console

from common.atomic import sweep_temp_files
from common.errors import ConfigError
import train_core
from evaluation import EvalConfig, read_eval_results, write_eval_results
from objective import TrialContext, TrialFailed, objective, record_comparison, trained_sizes
from study.deadline import seconds_left, training_budget, trial_fits
from study.gate import GateConfig, Verdict
from study.guard import NightAborted
from study.logs import TrialLogs
from study.oom import STREAK_LIMIT, known_oom, oom_streak, oom_summary
from study.remote import Node, RemoteTrainer, proxy_fallback, remote_lost
from study.remote_eval import LocalEvaluator, make_evaluator
from study.night import Plan
from study.promoter import Promoter
from study.results import export_results, export_trial
from study.serving import ServingError, make_serving
from study.dbmutex import db_mutex
from study.follow import reconcile_current, sync_current
from study.gate import judge, night_gate
from study.storage import open_storage, open_study, recover_local_trials, worker_id
from study.nights import EXIT_CAP_REACHED, cap_taken
from study.screen import night_table
from study.workers import (BASE_ID, Candidate, SharedBaseline, promote_cas, read_baseline, run_night,
                           tonight)
from study.vault import Vault, VaultEntry
from study.veto import early_veto_plan


class BaselineKeeper:
    """The eval every candidate is judged against: the promoted adapter's, else the base
    model's (nothing promoted yet). `fixed` pins the first one for the study's life."""

    def __init__(self, study: optuna.Study, promoter: Promoter, cache_dir: Path, model_dir: Path,
                 council_path: Path, policy: str, max_tokens: int, seed: int, progress: bool,
                 evaluator: Any = None):
        self.study, self.promoter, self.policy = study, promoter, policy
        self.cache_dir, self.model_dir, self.council_path = cache_dir, model_dir, council_path
        self.max_tokens, self.seed, self.progress = max_tokens, seed, progress
        self.evaluator = evaluator or LocalEvaluator()   # study.remote_eval: here or on the node

    def _base_eval_path(self) -> Path:
        return self.cache_dir / "baseline" / self.evaluator.model_sha256(self.model_dir)[:16] / "eval_results.json"

    def ensure_base_eval(self) -> Path:
        path = self._base_eval_path()
        if not path.exists():
            res = self.evaluator(EvalConfig(model=str(self.model_dir), adapter=None,
                                            council_path=str(self.council_path),
                                            max_tokens=self.max_tokens, seed=self.seed), progress=self.progress)
            write_eval_results(path, res)
        return path

    def current_path(self) -> tuple[str, Path]:
        pinned = self.study.user_attrs.get("fixed_baseline")
        if self.policy == "fixed" and pinned:
            return pinned["id"], Path(pinned["path"])
        cur = self.promoter.current()
        ident, path = (cur.name, cur / "eval_results.json") if cur else ("base", self.ensure_base_eval())
        if self.policy == "fixed":
            self.study.set_user_attr("fixed_baseline", {"id": ident, "path": str(path)})
        return ident, path

    def current(self) -> dict:
        return read_eval_results(self.current_path()[1])


class NightRunner:
    def __init__(self, plan: Plan, console: Console | None = None):
        self.p = plan
        self.s = plan.settings
        self.console = console or Console()
        self.serving = None
        self.night_serving = None            # study.keeper.NightServing once the study is open
        self.tonight: list[int] = []
        self.report_path: Path | None = None
        self.fallback: Plan | None = None
        self.ooms_in_a_row = 0
        self._open: tuple | None = None     # (study, storage, vault) once opened
        self._reported: set[int] = set()     # tonight's trials already in results.tsv and the vault
        self.cap_taken: str | None = None    # the night's trials were taken by earlier runs: what to say

    # -- building what the plan names -------------------------------------------------
    def _model_and_sessions(self) -> tuple[Path, Path]:
        if self.p.is_demo_model:
            from demo import ensure_model
            assets = ensure_model(self.p.model, self.s.path(self.s.paths.cache), self.p.council_path,
                                  pretrain_seconds=self.s.demo.pretrain_s, progress=self.p.progress)
            return assets.model_dir, assets.sessions_dir
        model = Path(self.p.mode_settings.local_model).expanduser()
        sessions = self.s.path(self.s.paths.sessions)
        if not sessions.is_dir():
            raise ConfigError(self.s.file, "paths.sessions", f"sessions folder not found: {sessions}")
        return model, sessions

    def _data_preparer(self, sessions: Path):
        import corpus
        out_root = self.s.path(self.s.paths.data)
        cache: dict[float, Any] = {}

        opts = self.s.corpus.model_dump()

        def prepare(mix_ratio: float):
            key = round(mix_ratio, 6)
            if key not in cache:
                try:
                    cache[key] = corpus.prepare(sessions, self.p.council_path, out_root, mix_ratio=mix_ratio,
                                                **opts)
                except ConfigError as exc:
                    # corpus names its own keys ("caps.gossip"): say they live under [corpus].
                    if exc.key and exc.file in (None, "", "corpus"):
                        raise ConfigError(self.s.file, f"corpus.{exc.key}", exc.problem) from None
                    raise
            return cache[key]
        return prepare

    def _canary(self, model_dir: Path, promoter: Promoter, evaluator: Any) -> None:
        """One case per category through every eval code path (~2 s) before a long night:
        a broken adapter or config stops the night here, not after hours of training."""
        cur = promoter.current()
        problems = evaluator.canary(EvalConfig(model=str(model_dir), adapter=str(cur) if cur else None,
                                     council_path=str(self.p.council_path), max_tokens=self.s.eval.max_tokens,
                                     seed=self.s.eval.seed))
        if problems:
            raise NightAborted("eval canary failed, not starting the night: " + "; ".join(problems))

    def _check_contamination(self, data) -> None:
        """A holdout case seen in training would measure memory, not skill: refuse the night."""
        from common.council import load_council
        from corpus.contamination import check, record
        from evaluation.suite import load_suite
        import evaluation
        suite_dir = Path(evaluation.__file__).parent / "suite"
        cases = load_suite(suite_dir, load_council(self.p.council_path))
        report = check(data, cases, n=self.s.corpus.contamination_n,
                       threshold=self.s.corpus.contamination_threshold)
        record(data, report)
        if not report.ok:
            raise ConfigError(str(data.dir / "train.jsonl"), None, report.message())

    def _studies_for_export(self, storage) -> Iterator[optuna.Study]:
        # Lazy: after a trial they are loaded only when results.tsv must be rebuilt whole.
        prefix = self.s.study.name_prefix + "-"
        return (optuna.load_study(study_name=name, storage=storage)
                for name in optuna.get_all_study_names(storage) if name.startswith(prefix))

    # -- the night ---------------------------------------------------------------------
    def run(self) -> int:
        p, s = self.p, self.s
        ms = p.mode_settings
        started = time.time()
        try:
            # Linux CPU only: route mlx's GEMM to an optimised BLAS (best effort, off elsewhere).
            from common.fastblas import enable as enable_fast_blas
            if enable_fast_blas():
                self.console.print("[dim]mlx CPU matrix products: OpenBLAS (common/fastblas.py)[/]")
            model_dir, sessions = self._model_and_sessions()
            evaluator = make_evaluator(ms, s.root)
            self.serving = make_serving(s, model_dir, p.adapters_root)
            prepare = self._data_preparer(sessions)
            import corpus
            first = (corpus.latest(s.path(s.paths.data)) if p.skip_prepare else None) \
                or prepare(p.space.baseline(p.mode.mode)["DATA_MIX_RATIO"])
            self._check_contamination(first)
            storage_url = s.storage_url()
            storage = open_storage(storage_url, heartbeat_interval=s.study.heartbeat_interval,
                                   grace_period=s.study.grace_period, max_retry=s.study.max_retry)
            study = open_study(storage, p.study_name, n_startup_trials=s.study.n_startup_trials,
                               space=p.space, mode=p.mode.mode)
            recovered = recover_local_trials(study, s.study.max_retry)
            if recovered:
                self.console.print(f"[yellow]recovered trials {recovered} left RUNNING by a killed night: marked FAIL, re-queued with the same params[/]")
            # Warm start is queued by the slot protocol (run_night), once per study across workers.
            night = p.night.key   # study/nights.py: the scheduled window, or this run by hand
            min_budget = ms.budget_s * s.study.min_budget_share   # the night's last trial may be shorter
            promoter = Promoter(p.adapters_root)
            logs = TrialLogs(s.path(s.paths.logs), s.schedule.keep_logs,
                             echo=None if p.progress else (lambda line: self.console.print("  " + line)))
            logs.rotate()
            self._sweep_temp_files()
            from optuna.artifacts import FileSystemArtifactStore, upload_artifact
            art_dir = s.path(s.paths.artifacts)
            art_dir.mkdir(parents=True, exist_ok=True)
            artifacts = FileSystemArtifactStore(str(art_dir))
            from study.proposer import make_proposer
            # baselines (below) is read only between trials, when the proposer writes its brief.
            proposer = make_proposer(s, p.space, p.mode.mode, warm_start_configs=p.space.warm_start_configs(p.mode.mode),
                                     baseline_eval=lambda: baselines.eval_of(read_baseline(study))[1],
                                     echo=lambda line: self.console.print(f"[cyan]{line}[/]"))

            def log(trial: optuna.Trial, line: str) -> None:
                logs.write(trial.user_attrs.get("experiment_id", f"trial-{trial.number}"), line)

            def on_finish(trial: optuna.Trial, adapter_dir: Path) -> None:
                if proposer is not None:
                    proposer.on_finish(trial)
                ua = trial.user_attrs
                if str(ua.get("result", "")).startswith("failed:"):
                    log(trial, f"result: {ua['result']}")
                exp_id = ua.get("experiment_id", f"trial-{trial.number}")
                for f in (adapter_dir / "eval_results.json", adapter_dir / "adapter_config.json",
                          logs.path_for(exp_id)):
                    if f.is_file():
                        upload_artifact(artifact_store=artifacts, file_path=str(f), study_or_trial=trial)
            vault = Vault(s.path(s.vault.root), retention=s.vault.retention)
            self._open = (study, storage, vault)
            keeper = BaselineKeeper(study, promoter, s.path(s.paths.cache), model_dir, p.council_path,
                                    s.study.baseline_policy, s.eval.max_tokens, s.eval.seed, p.progress,
                                    evaluator=evaluator)
            if promoter.repair_history():
                self.console.print(f"[yellow]adapters/history.json: recorded {promoter.current_id()}, "
                                   "promoted by a night that was killed before it wrote the record[/]")
            repaired = reconcile_current(study, promoter, storage_url)
            if repaired:
                self.console.print(f"[yellow]study baseline set to {repaired['id'] or 'the base model'}, what adapters/current "
                                   "points at (a promotion was interrupted or rolled back)[/]")
            sync_current(study, promoter, s)   # this machine serves what the study promoted

            def legacy_eval(exp_id: str) -> dict | None:
                # Promoted before eval summaries were kept in the study: this machine's copy.
                f = promoter.promoted / exp_id / "eval_results.json"
                return read_eval_results(f) if f.exists() else None
            baselines = SharedBaseline(study, storage_url, evaluator.model_sha256(model_dir)[:16],
                                       lambda: read_eval_results(keeper.ensure_base_eval()),
                                       policy=s.study.baseline_policy, legacy_eval=legacy_eval)
            self.night_serving = self._night_serving(study, promoter, storage_url, keeper, log)
            self.serving.stop()
            night_baseline = baselines.current()  # the base model's eval: once per base model, for all workers
            self._canary(model_dir, promoter, evaluator)
            self.night_serving.serve()   # the base eval exists now: the first start is probed against it
            self.report_path = s.path(s.paths.reports) / f"{datetime.now():%Y-%m-%d}.md"

            def suggest(trial: optuna.Trial) -> dict:
                trial.set_user_attr("worker", worker_id())
                trial.set_user_attr("mode_reason", p.mode.reason)
                self.tonight.append(trial.number)
                params = p.space.suggest(trial, p.mode.mode)
                self.console.rule(f"trial {trial.number}  ({len(self.tonight)}/{p.max_trials} tonight)")
                self.console.print("  " + "  ".join(f"{k}={v:g}" for k, v in params.items()))
                if (s.train.iters_scale, s.train.lr_scale) != (1, 1):   # the demo's sizes: what really trains
                    iters, lr = trained_sizes(params, s.train.iters_scale, s.train.lr_scale)
                    self.console.print(f"  trains {iters} steps (ITERS x {s.train.iters_scale:g}) "
                                       f"at lr {lr:g} (LEARNING_RATE x {s.train.lr_scale:g})")
                return params

            # Tonight's candidates are judged against one baseline (looks), and the noise bar
            # pools the configured prior with the study's own repeated configs.
            gate_cfg = night_gate(GateConfig(
                margin=s.gate.margin, jailbreak_floor=s.gate.jailbreak_floor,
                regression_cap=s.gate.regression_cap, require_p=s.gate.require_p,
                category_p_floor=s.gate.category_p_floor, bootstrap_samples=s.gate.bootstrap_samples,
                alpha=s.gate.alpha, noise_sd=s.gate.noise_sd, noise_adapters=s.gate.noise_adapters,
                noise_source=s.gate.noise_source), looks=p.max_trials, trials=study.get_trials(deepcopy=False))
            if gate_cfg.noise_bar() is not None:
                self.console.print(f"[dim]{gate_cfg.noise_bar().line()}[/]")

            def on_verdict(trial: optuna.Trial, verdict: Verdict, evaluated: dict, adapter_dir: Path) -> str:
                judged_id, judged_eval = baselines.judged   # what ctx.baseline() gave the gate
                trial.set_user_attr("baseline_id", judged_id)
                base_cat = judged_eval.get("per_category", {})
                trial.set_user_attr("delta_per_category", {c: round(v - base_cat[c], 4) for c, v in
                                                           evaluated["per_category"].items() if c in base_cat})
                if verdict.result != "kept":
                    return verdict.result
                exp_id = trial.user_attrs["experiment_id"]

                def rejudge(base: dict) -> Verdict:
                    # Before the promoter copies the adapter folder: the copy carries the deciding verdict.
                    v = judge(evaluated, base, gate_cfg)
                    ref = read_baseline(study)
                    record_comparison(adapter_dir / "eval_results.json", evaluated, v,
                                      against=ref.id if ref is not None else BASE_ID)
                    return v
                out = promote_cas(
                    study, storage_url, Candidate(trial, exp_id, evaluated, verdict, judged_id),
                    rejudge=rejudge, baselines=baselines,
                    moving=s.study.baseline_policy == "ratchet",
                    promote=lambda v: promoter.promote(adapter_dir, exp_id, meta={
                        "score": v.score, "baseline": v.baseline, "study": p.study_name, "trial": trial.number}))
                return out.result

            ctx = TrialContext(
                mode=p.mode.mode, model_dir=model_dir, model_name=p.model_label, suggest=suggest,
                prepare_data=prepare, experimental_root=s.path(s.paths.experimental),
                council_path=p.council_path,
                budget_s=lambda: training_budget(p.deadline, ms.budget_s, ms.eval_s),
                baseline=baselines.current, on_verdict=on_verdict, gate=gate_cfg,
                train_defaults=dict(batch_size=s.train.batch_size, val_every=s.train.val_every,
                                    val_batches=s.train.val_batches, mask_prompt=s.train.mask_prompt),
                iters_scale=s.train.iters_scale, lr_scale=s.train.lr_scale, eval_max_tokens=s.eval.max_tokens, eval_seed=s.eval.seed,
                prune=s.study.prune, pause_serving=self.night_serving.paused, progress=p.progress,
                log=log, on_finish=on_finish,
                run_training=(RemoteTrainer(Node.from_settings(ms, s.root)) if p.mode.mode == "full"
                              else train_core.run_training),
                known_oom=lambda params: known_oom(study, params),
                run_eval=evaluator,
                early_veto=early_veto_plan(s, p.council_path, baselines.current),
            )

            def after_trial(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                with db_mutex(storage_url, f"results:{p.study_name}"):
                    export_trial(self._studies_for_export(storage), study_, trial, s.path(s.paths.results))
                sync_current(study_, promoter, s)
                self.night_serving.serve()       # a worker's promotion followed: served and probed too
                self._vault_entry(vault, trial)
                self._reported.add(trial.number)
                self._print_trial(trial)
                tonight = [t for t in study_.get_trials(deepcopy=False) if t.number in self.tonight]
                if self.night_serving.failed:
                    self.console.print(f"[red]stopping: serving failed: {self.night_serving.failed}[/]")
                    study_.stop()
                elif oom_streak(tonight) >= STREAK_LIMIT:
                    self.console.print(f"[red]{oom_summary(tonight)}[/]")
                    study_.stop()
                elif remote_lost(trial):
                    self.console.print(f"[yellow]training node lost in trial {trial.number}: the night goes on in proxy mode[/]")
                    self.fallback = proxy_fallback(p, f"training node lost in trial {trial.number}")
                    study_.stop()
                elif not trial_fits(p.deadline, ms.budget_s, ms.eval_s, min_budget_s=min_budget):
                    self.console.print(f"[yellow]stopping: the next trial would not finish before {p.deadline:%H:%M}[/]")
                    study_.stop()

            if not trial_fits(p.deadline, ms.budget_s, ms.eval_s, min_budget_s=min_budget):
                self.console.print(f"[yellow]no trial fits before the deadline {p.deadline:%Y-%m-%d %H:%M} "
                                   f"({seconds_left(p.deadline):.0f} s left): nothing to do tonight[/]")
            else:
                # max_trials is the study's cap for this night, all workers together.
                ran = run_night(study, storage_url, night, p.max_trials, lambda t: objective(t, ctx),
                                warm_start_configs=p.space.warm_start_configs(p.mode.mode),
                                callbacks=[after_trial], catch=(TrialFailed,),
                                keep_going=lambda: trial_fits(p.deadline, ms.budget_s, ms.eval_s, min_budget_s=min_budget),
                                before_slot=(lambda: proposer.before_slot(study, night, p.max_trials)) if proposer else (lambda: None))
                if not ran:
                    self.cap_taken = cap_taken(study, p)
            with db_mutex(storage_url, f"results:{p.study_name}"):
                export_results(self._studies_for_export(storage), s.path(s.paths.results))
            self._night_count = len(tonight(study.get_trials(deepcopy=False), night))
            if self.tonight:
                from study.report import build_report
                self.report_path = build_report(study, datetime.now().date(), s.path(s.paths.reports), night_baseline,
                                                jailbreak_floor=s.gate.jailbreak_floor)
                self._report_serving()
            self._summary(study, promoter, time.time() - started)
        except BaseException:
            self._save_what_ended()
            raise
        finally:
            # The user's model is back up, on adapters/current, whatever happened tonight; a
            # failure here never replaces the exception on its way out (SIGTERM stays 143).
            self._serve_at_end()
        if self.night_serving is not None and self.night_serving.failed:
            raise ServingError(self.night_serving.failed)
        left = p.max_trials - getattr(self, "_night_count", len(self.tonight))
        if self.fallback is not None and left > 0:
            return NightRunner(dataclasses.replace(self.fallback, max_trials=left), self.console).run()
        if self.cap_taken and not self.tonight:
            print(self.cap_taken, file=sys.stderr)     # one line: what was taken, by whom, what to type
            return EXIT_CAP_REACHED
        return 0


    # -- serving ----------------------------------------------------------------------
    def _night_serving(self, study, promoter: Promoter, storage_url: str, keeper: BaselineKeeper, log):
        from study.keeper import night_serving
        return night_serving(self.serving, self.s, self.p.council_path, study, promoter, storage_url,
                             keeper._base_eval_path(), log_trial=log,
                             echo=lambda line: self.console.print(f"  [magenta]{line}[/]"))

    def _serve_at_end(self) -> None:
        in_flight = sys.exc_info()[0] is not None     # called from run()'s finally
        if self.night_serving is not None:
            self.night_serving.serve()
            return
        if self.serving is not None:     # the night ended before its study opened
            try:
                self.serving.start()
            except Exception as exc:  # noqa: BLE001 - reported; the exception on its way out wins
                if in_flight:
                    self.console.print(f"[red]serving could not be started: {exc}[/]")
                else:
                    raise ServingError(str(exc)) from exc

    def _report_serving(self) -> None:
        if self.night_serving is not None and self.report_path is not None:
            self.night_serving.append_to_report(self.report_path)

    def _sweep_temp_files(self) -> None:
        """Temp files of writes killed mid-way (an earlier night's SIGKILL): never a
        target, but litter in the folders the user reads."""
        s = self.s
        folders = ((s.path(s.paths.results).parent, False), (s.path(s.paths.reports), False),
                   (s.path(s.vault.root), True), (s.path(s.paths.experimental), True), (self.p.adapters_root, True))
        swept = [f for folder, recursive in folders for f in sweep_temp_files(folder, recursive=recursive)]
        if swept:
            self.console.print(f"[dim]removed {len(swept)} temp file(s) left by interrupted writes: "
                               + ", ".join(str(f) for f in swept[:3]) + (" …" if len(swept) > 3 else "") + "[/]")

    # -- reporting ---------------------------------------------------------------------
    def _save_what_ended(self) -> None:
        """The night ends early (SIGTERM from launchd, a crash): the trial that was running
        has ended as FAIL; it goes into results.tsv and the vault now, not next night."""
        if self._open is None:
            return
        study, storage, vault = self._open
        s = self.s
        try:
            with db_mutex(s.storage_url(), f"results:{self.p.study_name}"):
                export_results(self._studies_for_export(storage), s.path(s.paths.results))
            for t in study.get_trials(deepcopy=False):
                if t.number in self.tonight and t.state.is_finished() and t.number not in self._reported:
                    self._vault_entry(vault, t)
                    self._reported.add(t.number)
        except Exception as exc:  # noqa: BLE001 - best effort on the way out; the study has it all
            self.console.print(f"[red]could not write results.tsv / the vault on the way out: {exc}[/]")

    def _vault_entry(self, vault: Vault, t: optuna.trial.FrozenTrial) -> None:
        ua = t.user_attrs
        if "experiment_id" not in ua:
            return
        deltas = dict(ua.get("delta_per_category") or {})
        result = ua.get("result") or ("pruned" if t.state == TrialState.PRUNED else f"failed:{ua.get('fail_reason', 'crashed')}")
        vault.write(VaultEntry(
            id=ua["experiment_id"], date=datetime.fromisoformat(ua["timestamp"]), mode=ua.get("mode", ""),
            model=ua.get("model", ""), score=ua.get("score"), baseline=ua.get("baseline"), result=result,
            reasons=list(ua.get("reasons", [])), params=dict(t.params), per_category_delta=deltas,
            extra={"study": self.p.study_name, "trial": t.number, "p_better": ua.get("p_better"),
                   "holdout_score": ua.get("holdout_score"), "report": str(self.report_path),
                   "stats": ua.get("stats"), "serving": ua.get("serving"), "serving_error": ua.get("serving_error"),
                   **{k: ua[k] for k in ("proposer", "proposer_outcome") if k in ua}},
        ))

    def _print_trial(self, t: optuna.trial.FrozenTrial) -> None:
        ua = t.user_attrs
        score = ua.get("score")
        self.console.print(
            f"  → {ua.get('result', t.state.name.lower())}"
            + (f"  score {score:.3f} vs baseline {ua.get('baseline'):.3f}" if score is not None and ua.get("baseline") is not None else "")
            + f"  ({ua.get('elapsed_s', 0):.0f} s: train {ua.get('train_s', 0):.0f} s, eval {ua.get('eval_s', 0):.0f} s)"
        )
        for r in ua.get("reasons", []):
            self.console.print(f"    · {r}")

    def _summary(self, study: optuna.Study, promoter: Promoter, elapsed: float) -> None:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        table = night_table((trials[n] for n in self.tonight if n in trials),
                            f"tonight: {self.p.study_name}  ({elapsed:.0f} s)")
        self.console.print(table)
        cur = promoter.current_id()
        try:
            best = study.best_trial
            self.console.print(f"best feasible trial so far: #{best.number} score {best.value:.3f} "
                               f"({best.user_attrs.get('result')})", soft_wrap=True)
        except ValueError:
            self.console.print("no feasible completed trial yet")
        # soft_wrap: a path stays whole on its line, to be copied from a log file.
        self.console.print(f"serving adapter: {cur or 'none promoted yet (base model)'}", soft_wrap=True)
        if self.tonight:
            self.console.print(f"morning report: {self.report_path}", soft_wrap=True)
