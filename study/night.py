"""What a night needs, resolved without side effects: settings, mode, model, study name.

`plan()` touches nothing (so --dry-run can print it); `Resources` then builds what the
plan names (the demo model, the corpus, the storage) when the night really runs.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from common.council import load_council
from common.errors import ConfigError
from study.config import Settings, load_settings, parse_hhmm
from study.deadline import next_deadline
from study.nights import Night, night_of
from study.modes import ModeChoice, choose_mode
from study.serving import LOOPBACK
from study.space import SearchSpace, load_search_space
from study.storage import study_name


@dataclass
class Plan:
    settings: Settings
    space: SearchSpace
    council_path: Path
    mode: ModeChoice
    model: str           # as configured ("demo" or a path)
    model_label: str     # short name for results.tsv and the study name
    deadline: datetime
    max_trials: int
    study_name: str
    skip_prepare: bool
    progress: bool
    started: datetime = field(default_factory=datetime.now)
    # The scheduled window, HH:MM → HH:MM: [schedule] start → [study] deadline (a demo night
    # without --deadline: from when it starts to its deadline). study/nights.py.
    window_start: str = "02:00"
    window_end: str = "05:00"
    argv: tuple[str, ...] = ()      # the command line, for "what to type" hints
    # A demo without --deadline: each run is a night of its own, however close two runs
    # start (a window keyed by HH:MM would join a rerun to the run a kill ended that minute).
    own_window: bool = False

    @property
    def night(self) -> Night:
        from study.workers import worker_id
        if self.own_window:
            return Night(f"manual/{self.started.isoformat(timespec='seconds')}/{worker_id()}", False,
                         self.started, self.deadline)
        return night_of(self.started, self.window_start, self.window_end, worker_id())

    @property
    def mode_settings(self):
        return getattr(self.settings.modes, self.mode.mode)

    @property
    def is_demo_model(self) -> bool:
        """A model the demo builds itself: [demo] model under --demo (the tiny one or
        SmolLM2), or "demo" named as a mode's model."""
        return self.model == (self.settings.demo.model if self.settings.is_demo else "demo")

    @property
    def adapters_root(self) -> Path:
        # An adapter only fits its base model: full mode's promoted adapters live apart.
        root = self.settings.path(self.settings.paths.adapters)
        return root if self.mode.mode == "proxy" else root / "full"


DEMO_MODEL_TEXT = {"demo": "tiny local model, ", "smollm2": "SmolLM2-135M-Instruct from the installed package, "}


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="autoresearch.toml", help="runtime settings (default: %(default)s)")
    p.add_argument("--demo", action="store_true",
                   help="use the embedded demo: a tiny local model and sample sessions, built on first use, no network")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit; creates nothing")
    p.add_argument("--mode", choices=("auto", "proxy", "full"), default=None,
                   help="auto: full if the training node answers ssh, else proxy (default: from the config)")
    p.add_argument("--full", action="store_true", help="same as --mode full")
    p.add_argument("--skip-prepare", action="store_true", help="reuse the latest prepared corpus")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay line-oriented)")


def plan(args: argparse.Namespace, *, max_trials: int | None = None, now: datetime | None = None) -> Plan:
    """now: when the run starts (injected by tests; the night it belongs to depends on it)."""
    now = (now or datetime.now()).replace(microsecond=0)
    demo_model = getattr(args, "demo_model", None)
    if demo_model and not args.demo:
        raise ConfigError("--demo-model", None, "only with --demo (it picks the demo's model)")
    settings = load_settings(args.config, demo=args.demo, demo_model=demo_model)
    space = load_search_space(settings.root / "search_space.yaml")
    council_path = settings.root / "council.yaml"
    load_council(council_path)  # validate now: a typo must not wait until the first eval
    serving = settings.serving
    if serving.backend == "managed" and serving.host not in LOOPBACK and not serving.allow_remote:
        # ManagedServing refuses it too, but only once the night holds its lock and has built things.
        raise ConfigError(settings.file, "serving.host", f"{serving.host!r} is not loopback; "
                          "set serving.allow_remote = true to expose the model")
    deadline_s = getattr(args, "deadline", None) or settings.study.deadline
    try:
        parse_hhmm(deadline_s)
    except ValueError as exc:
        raise ConfigError("--deadline", None, str(exc)) from None
    requested = "full" if args.full else (args.mode or settings.modes.default)
    full = settings.modes.full
    ssh_cfg = str(settings.path(full.ssh_config)) if full.ssh_config else None
    choice = choose_mode(requested, full.host, ssh_cfg, accept_new=full.accept_new_host_key)
    ms = getattr(settings.modes, choice.mode)
    label = ms.model if settings.is_demo else Path(ms.model).expanduser().name
    # The model folder and the sessions are checked by study/preflight.py (the night and --dry-run).
    if ms.eval_on == "node" and settings.serving.backend == "managed":
        raise ConfigError(settings.file, "serving.backend",
                          f'"managed" serves the base model from this machine, but [modes.{choice.mode}] '
                          'eval_on = "node" says it is only on the node: use launchd, command or none')
    deadline = next_deadline(deadline_s, now)
    window = settings.schedule.start, settings.study.deadline
    own_window = settings.is_demo and not getattr(args, "deadline", None)
    if own_window:
        # A demo night is a compressed night that starts now, whatever the clock says.
        deadline = now + timedelta(minutes=settings.demo.window_min)
        window = f"{now:%H:%M}", f"{deadline:%H:%M}"
    return Plan(
        settings=settings, space=space, council_path=council_path, mode=choice, model=ms.model,
        model_label=label, deadline=deadline,
        max_trials=max_trials or getattr(args, "max_trials", None) or settings.study.max_trials,
        study_name=study_name(settings.study.name_prefix, choice.mode, label),
        skip_prepare=args.skip_prepare, progress=not args.no_progress,
        started=now, window_start=window[0], window_end=window[1], own_window=own_window,
    )


def describe(p: Plan) -> list[tuple[str, str]]:
    s = p.settings
    ms = p.mode_settings
    base = p.space.baseline(p.mode.mode)
    rows = [
        ("config", s.file + ("  (demo overlay)" if s.is_demo else "")),
        ("mode", f"{p.mode.mode}  ({p.mode.reason})"),
        ("model", p.model + (f"  ({DEMO_MODEL_TEXT.get(p.model, '')}built on first use)" if p.is_demo_model else "")),
        ("study", f"{p.study_name} @ {s.storage_url()}"),
        ("trials", f"up to {p.max_trials} in this night, each ≤ {ms.budget_s:.0f} s training + ~{ms.eval_s:.0f} s eval"),
        ("deadline", f"{p.deadline:%Y-%m-%d %H:%M} (no trial starts that cannot finish before it)"),
        ("night", p.night.describe()),
        ("gate", f"overall ≥ baseline + {s.gate.margin}; jailbreak ≥ {s.gate.jailbreak_floor}; "
                 f"no agent < its baseline − {s.gate.regression_cap}"
                 + (f"; P(better) ≥ {s.gate.require_p}" if s.gate.require_p else "")),
        ("baseline config", ", ".join(f"{k}={v:g}" for k, v in base.items())),
        ("warm start", f"{len(p.space.warm_start_configs(p.mode.mode))} configs (baseline + known-good moves), once per study"),
        ("results", str(s.path(s.paths.results))),
        ("adapters", str(p.adapters_root)),
        ("vault", str(s.path(s.vault.root))),
        ("serving", s.serving.backend),
    ]
    return rows
