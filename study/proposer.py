"""The proposer (issue 17): a language model suggests a share of the study's searched
trials; the default sampler runs the rest.

Published comparisons on the autoresearch task found LLM proposers alone no better than
TPE in a fixed space, and a hybrid (the LLM ~30 % of the trials, a model-based sampler the
rest) the best of nine methods; benchmarks/search_efficiency.py measures the hybrid here.

Which trials. Between two trials the night calls `Proposer.before_slot`. Once the warm
start has run and nothing else waits (a retry, a queued config), the study's n-th searched
trial (warm-start configs and retries do not count) is the proposer's when
floor((n+1)·share) > floor(n·share): the same trials on every machine and every resumed
night. Then the model gets the brief (study/brief.py) and answers one config and a
one-sentence hypothesis as JSON.

What runs. A valid config (types, ranges, steps, this mode's limits, not a config that
already ran out of memory, not an exact repeat) enters the study as an enqueued trial
(`study.enqueue_trial`), so the dashboard, resumption and `study.best_trial` stay Optuna's
own. Anything else (malformed JSON, an invalid value, a late answer, a refusal, a network
error, the night's token budget spent) queues a trial the default sampler fills, carrying
the reason. Either way the trial's user attr `proposer` says what happened, and
`proposer_outcome` (set as the trial ends) what came of it; the same goes into an
optuna-dashboard note on the trial, the vault entry and the morning report.

Keys: the settings name the environment variable; the key goes to LiteLLM only
(evaluation/llm.py), and every reason recorded is redacted.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from common.errors import ConfigError, one_line
from study import brief
from study.oom import oomed_trial, same_params
from study.space import SearchSpace
from study.workers import NIGHT, _queue, next_warm_start, tonight

PROPOSER = "proposer"                # trial user attr: {status, hypothesis | reason, model, tokens, ...}
OUTCOME = "proposer_outcome"         # trial user attr: what came of it
PROPOSED, FALLBACK = "proposed", "fallback"
_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)


class Rejected(Exception):
    """A proposal the study will not run; the message is the reason recorded."""


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


Complete = Callable[[list[dict]], Answer]


def is_turn(n: int, share: float) -> bool:
    """Whether the n-th searched trial (from 0) is the proposer's: a deterministic share."""
    return math.floor(round((n + 1) * share, 9)) > math.floor(round(n * share, 9))


def searched(t: FrozenTrial) -> bool:
    """A trial of the search proper: not a warm-start or hand-queued config, not a retry."""
    if "failed_trial" in t.system_attrs:
        return False
    return "fixed_params" not in t.system_attrs or (t.user_attrs.get(PROPOSER) or {}).get("status") == PROPOSED


def tokens_tonight(trials: Sequence[FrozenTrial], night: str) -> int:
    return sum(int((t.user_attrs.get(PROPOSER) or {}).get("tokens", 0)) for t in trials
               if t.user_attrs.get(NIGHT) == night and "failed_trial" not in t.system_attrs)


def parse_reply(text: str) -> tuple[dict, str]:
    """(config, hypothesis) from the model's answer: the first JSON object in it, after any
    reasoning block and code fence."""
    body = _THINK.sub("", text or "")
    start = body.find("{")
    if start < 0:
        snippet = " ".join(body.split())[:80]
        raise Rejected(f"no JSON object in the answer (a refusal?): {snippet!r}")
    try:
        obj, _ = json.JSONDecoder().raw_decode(body[start:])
    except ValueError as exc:
        raise Rejected(f"malformed JSON: {exc.msg} at char {exc.pos}: {' '.join(body[start:].split())[:80]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        raise Rejected("the JSON has no \"config\" object")
    hyp = obj.get("hypothesis")
    if not isinstance(hyp, str) or not hyp.strip():
        raise Rejected("the JSON has no \"hypothesis\" sentence")
    return obj["config"], " ".join(hyp.split())[:300]


def check_config(config: dict, space: SearchSpace, mode: str, study: optuna.Study) -> dict[str, Any]:
    """The config as the study would run it, or Rejected naming the first problem."""
    params = space.for_mode(mode)
    for name in config:
        if name not in params:
            raise Rejected(f"unknown parameter {name!r}")
    out: dict[str, Any] = {}
    for name, p in params.items():
        if name not in config:
            raise Rejected(f"missing parameter {name}")
        v = config[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise Rejected(f"{name}={v!r} is not a number")
        if p.type == "int":
            if not float(v).is_integer():
                raise Rejected(f"{name}={v!r} is not an integer")
            v = int(v)
        else:
            v = float(v)
        if not p.low <= v <= p.high:
            where = f" in {mode} mode" if name in space.mode_overrides.get(mode, {}) else ""
            raise Rejected(f"{name}={v:g} is outside [{p.low:g}, {p.high:g}]{where}")
        if p.step and (v - int(p.low)) % p.step:
            raise Rejected(f"{name}={v} is off its grid (step {p.step} from {p.low:g})")
        out[name] = v
    oom = oomed_trial(study, out)
    if oom is not None:
        raise Rejected(f"this exact config ran out of memory in trial {oom.number}")
    for t in study.get_trials(deepcopy=False):
        ran = t.params or t.system_attrs.get("fixed_params") or {}
        if ran and same_params(ran, out):
            raise Rejected(f"an exact repeat of trial {t.number}")
    return out


def screen(study: optuna.Study, space: SearchSpace, mode: str, params: dict, ratio: float) -> None:
    """Rejected when the default sampler's own model rates the proposal below `ratio` of
    the candidate it would pick itself: a model that proposes at random costs the study
    little more than the time of the question (benchmarks/search_efficiency.py)."""
    from study.sampler import rate
    rated = rate(study, space, mode, params)
    if rated is None:
        return              # no feasible trial yet: the sampler has no model to judge with
    mine, pick = rated
    if mine < ratio * pick:
        raise Rejected(f"screened out: the study's model rates it {mine:.3g} (expected improvement x "
                       f"P(feasible)) against {pick:.3g} for its own next pick (screen {ratio:g})")


def litellm_complete(settings: Any) -> Complete:
    """Calls the configured model once (no retries: the sampler is the fallback)."""
    from evaluation.llm import Endpoint, complete   # lazy: LiteLLM takes seconds to import

    ep = Endpoint(model=settings.model, api_base=settings.api_base or None,
                  api_key_env=settings.api_key_env or None, timeout_s=settings.timeout_s, retries=0,
                  extra={"max_retries": 0})   # nor the OpenAI client's own retries
    ep.api_key()                                      # a missing key stops the night here (exit 2)

    def call(messages: list[dict]) -> Answer:
        r = complete(ep, messages, max_tokens=settings.max_tokens, temperature=settings.temperature, seed=0)
        return Answer(r.text, r.prompt_tokens, r.completion_tokens, r.latency_s)
    return call


def _redactor(settings: Any) -> Callable[[str], str]:
    try:
        from evaluation.llm import redact, secret_values
    except ImportError:   # the benchmark's stand-in runs without the evaluation package's deps
        return lambda text: text
    secrets = secret_values((settings.api_key_env or "",))
    return lambda text: redact(text, secrets)


class Proposer:
    """Between trials: asks the model on the proposer's turns and queues what runs next."""

    def __init__(self, settings: Any, space: SearchSpace, mode: str, *, program_md: str | None,
                 complete: Complete | None = None, baseline_eval: Callable[[], dict | None] = lambda: None,
                 warm_start_configs: Sequence[dict] = (), echo: Callable[[str], None] = lambda line: None):
        self.s, self.space, self.mode, self.program_md = settings, space, mode, program_md
        self.complete = complete or litellm_complete(settings)
        self.baseline_eval, self.warm, self.echo = baseline_eval, list(warm_start_configs), echo
        self.redact = _redactor(settings)

    def turn(self, study: optuna.Study, night: str, cap: int) -> int | None:
        """The searched-trial index when the next trial is the proposer's, else None."""
        trials = study.get_trials(deepcopy=False)
        if len(tonight(trials, night)) >= cap or any(t.state == TrialState.WAITING for t in trials):
            return None        # the cap is reached, or a retry / queued config runs first
        if next_warm_start(trials, self.warm) is not None:
            return None        # the warm start runs first
        n = sum(searched(t) for t in trials)
        return n if is_turn(n, self.s.share) else None

    def before_slot(self, study: optuna.Study, night: str, cap: int) -> int | None:
        """On the proposer's turn, queue tonight's next trial (the model's config, or one
        the sampler fills, with the reason); returns its number, else None."""
        n = self.turn(study, night, cap)
        if n is None:
            return None
        record, params = self._ask(study, night, n)
        if params is not None:
            study.enqueue_trial(params, user_attrs={NIGHT: night, PROPOSER: record})
            self.echo(f"proposer: {record['hypothesis']}")
        else:
            # No fixed params: the default sampler fills it, as its own searched trial.
            _queue(study, None, night, user_attrs={PROPOSER: record})
            self.echo(f"proposer fell back to the sampler: {record['reason']}")
        return max(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _baseline(self) -> dict | None:
        try:
            return self.baseline_eval()
        except Exception:  # noqa: BLE001 - the brief then says n/a; the night needs no proposer
            return None

    def _ask(self, study: optuna.Study, night: str, n: int) -> tuple[dict, dict | None]:
        record: dict[str, Any] = {"status": FALLBACK, "model": self.s.model, "turn": n, "tokens": 0}
        trials = study.get_trials(deepcopy=False)
        msgs = brief.messages(program_md=self.program_md, space=self.space, mode=self.mode, trials=trials,
                              baseline_eval=self._baseline(), max_rows=self.s.max_rows)
        used = tokens_tonight(trials, night)
        need = sum(len(m["content"]) for m in msgs) // 3 + self.s.max_tokens   # ~3 chars a token, at worst
        if used + need > self.s.max_tokens_per_night:
            record["reason"] = (f"token budget: {used} of {self.s.max_tokens_per_night} used tonight, "
                                f"this brief needs ~{need}")
            return record, None
        t0 = time.monotonic()
        try:
            ans = self.complete(msgs)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - timeout, refused connection, provider error: the sampler runs
            record.update(reason=self.redact(f"no answer: {one_line(exc)}")[:300],
                          latency_s=round(time.monotonic() - t0, 2))
            return record, None
        latency = ans.latency_s or time.monotonic() - t0
        tokens = ans.prompt_tokens + ans.completion_tokens or need
        record.update(tokens=int(tokens), prompt_tokens=ans.prompt_tokens,
                      completion_tokens=ans.completion_tokens, latency_s=round(latency, 2))
        try:
            if latency > self.s.timeout_s:
                raise Rejected(f"late: answered after {latency:.1f} s (timeout_s {self.s.timeout_s:g})")
            config, hypothesis = parse_reply(ans.text)
            params = check_config(config, self.space, self.mode, study)
            if self.s.screen > 0:
                screen(study, self.space, self.mode, params, self.s.screen)
        except Rejected as exc:
            record["reason"] = self.redact(str(exc))[:300]
            return record, None
        record.update(status=PROPOSED, hypothesis=self.redact(hypothesis))
        return record, params

    # -- what came of it --------------------------------------------------------------
    def on_finish(self, trial: optuna.Trial) -> None:
        """Records the outcome of a trial the proposer had its turn on (user attr and an
        optuna-dashboard note); called by the objective before the trial is told."""
        record = trial.user_attrs.get(PROPOSER)
        if not record:
            return
        outcome = outcome_of(trial.user_attrs, best_before(trial.study, trial.number))
        trial.set_user_attr(OUTCOME, outcome)
        save_note(trial, note(record, outcome))


def best_before(study: optuna.Study, number: int) -> float | None:
    scores = [t.user_attrs["score"] for t in study.get_trials(deepcopy=False)
              if t.number < number and t.state == TrialState.COMPLETE and t.user_attrs.get("feasible")
              and t.user_attrs.get("score") is not None]
    return max(scores, default=None)


def outcome_of(ua: dict, best: float | None) -> str:
    result, score = ua.get("result", "unfinished"), ua.get("score")
    if score is None:
        return str(result)
    text = f"{result}: score {score:.3f}"
    if ua.get("baseline") is not None:
        text += f" vs baseline {ua['baseline']:.3f}"
    if best is not None:
        text += (f"; {'beat' if ua.get('feasible') and score > best else 'did not beat'} the best before "
                 f"({best:.3f}, {score - best:+.3f})")
    return text


def note(record: dict, outcome: str) -> str:
    if record.get("status") == PROPOSED:
        head = f"**Proposed by {record.get('model')}.** Hypothesis: {record.get('hypothesis')}"
    else:
        head = f"**The proposer's turn, run by the sampler:** {record.get('reason')}"
    return f"{head}\n\n**Outcome:** {outcome}\n\n({record.get('tokens', 0)} tokens, {record.get('latency_s', 0)} s)"


def save_note(trial: optuna.Trial, text: str) -> None:
    try:
        from optuna_dashboard import save_note as dashboard_note
    except ImportError:          # the dashboard is optional; the user attrs hold the same
        return
    dashboard_note(trial, text)


def report_lines(trials: Sequence[FrozenTrial]) -> list[str]:
    """The morning report's lab notebook: each trial the proposer had its turn on."""
    rows = [t for t in trials if t.user_attrs.get(PROPOSER)]
    if not rows:
        return []
    out = ["## Proposals", "", "| trial | by | hypothesis (or why the sampler ran it) | outcome |", "|---|---|---|---|"]
    for t in rows:
        r = t.user_attrs[PROPOSER]
        by = r.get("model") if r.get("status") == PROPOSED else "sampler"
        said = r.get("hypothesis") if r.get("status") == PROPOSED else r.get("reason")
        cells = [str(t.user_attrs.get("experiment_id", t.number)), str(by), str(said),
                 str(t.user_attrs.get(OUTCOME, t.state.name.lower()))]
        out.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return [*out, ""]


def make_proposer(settings: Any, space: SearchSpace, mode: str, **kw: Any) -> Proposer | None:
    """The night's proposer from autoresearch.toml ([proposer]), or None when it is off."""
    ps = settings.proposer
    if not ps.enabled:
        return None
    program = settings.root / "program.md"
    text = program.read_text(encoding="utf-8") if program.is_file() else None
    try:
        return Proposer(ps, space, mode, program_md=text, **kw)
    except ConfigError as exc:   # the key's variable is not set: exit 2, before any trial
        raise ConfigError(settings.file, f"proposer.{exc.key}", exc.problem) from None
