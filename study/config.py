"""autoresearch.toml: runtime settings, validated on load, with the [demo] overlay.

Every error names the file, the key and what was wrong (ConfigError → exit 2).
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import ConfigError

STORAGE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def parse_hhmm(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"{value!r} is not a time of day HH:MM (00:00–23:59)")
    return int(m[1]), int(m[2])


class StudySettings(_Strict):
    storage: str = "sqlite:///autoresearch.db"
    name_prefix: str = Field("council", pattern=r"^[A-Za-z0-9_.-]+$")
    max_trials: int = Field(4, ge=1)
    deadline: str = "05:00"
    n_startup_trials: int = Field(4, ge=0)
    heartbeat_interval: int = Field(60, ge=1)
    grace_period: int = Field(180, ge=1)
    max_retry: int = Field(1, ge=0)
    baseline_policy: Literal["ratchet", "fixed"] = "ratchet"
    prune: bool = True
    # The night's last trial may start with this share of budget_s when a whole budget no
    # longer fits before the deadline (1.0: only whole budgets). Its budget_s attr says so.
    min_budget_share: float = Field(0.5, gt=0, le=1)

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, v: str) -> str:
        parse_hhmm(v)
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in STORAGE_SCHEMES:
            raise ValueError(f"unknown storage URL scheme {scheme or v!r} (use one of {', '.join(STORAGE_SCHEMES)})")
        return v


class EarlyVetoSettings(_Strict):
    """[gate.early]: the vetoes at the training checkpoints (study/veto.py)."""
    enabled: bool = True                # false: no checks at all (no cost, no early veto)
    every: int = Field(1, ge=1)         # check every k-th validation ([train] val_every steps apart)
    from_step: int = Field(1, ge=0)     # no check before this step
    max_checks: int = Field(8, ge=2)    # at most this many a run: `every` grows for long runs
    regression: Literal["off", "weakest", "all"] = "off"   # per agent: no check, its weakest category, all
    z: float = Field(1.645, gt=0)       # one-sided upper bound: 1.645 = 95 %
    min_checks: int = Field(2, ge=1)    # checkpoints needed before a veto (a trend needs two)
    trend_window: int = Field(3, ge=2)  # checkpoints the "not rising" slope is fitted over


class GateSettings(_Strict):
    margin: float = Field(0.02, ge=0)
    jailbreak_floor: float = Field(0.70, ge=0, le=1)
    regression_cap: float = Field(0.10, ge=0, le=1)
    bootstrap_samples: int = Field(2000, ge=100)
    require_p: float | None = Field(None, gt=0, lt=1)
    category_p_floor: float | None = Field(None, gt=0, lt=1)
    # The noise bar (study/noise.py): a night of no-better candidates promotes one with
    # chance <= alpha; noise_sd is the prior training-seed sd (benchmarks/null_seeds.py).
    alpha: float | None = Field(None, gt=0, lt=1)
    noise_sd: float | None = Field(None, ge=0)
    noise_adapters: int = Field(2, ge=2)
    noise_source: str = "prior"
    early: EarlyVetoSettings = EarlyVetoSettings()

    @model_validator(mode="after")
    def _alpha_needs_noise(self) -> "GateSettings":
        if self.alpha is not None and self.noise_sd is None:
            raise ValueError("alpha (the noise bar) needs noise_sd, the prior training-seed noise")
        return self


class ModeSettings(_Strict):
    model: str                          # full mode: the base model folder ON THE NODE
    budget_s: float = Field(gt=0)
    eval_s: float = Field(300, gt=0)
    # Full mode only: the training node, reached with ssh/rsync (argv lists, no shell).
    host: str = ""                      # ssh host or Host alias; empty: full mode off
    eval_model: str = ""                # local folder of the same base model for the eval; empty: `model`
    remote_python: str = "python3"      # interpreter on the node with mlx + mlx-lm
    remote_workdir: str = "~/council-train"  # code, data, specs and adapters on the node
    ssh_config: str = ""                # ssh -F file (relative to this file); empty: ssh's own
    accept_new_host_key: bool = False   # first contact: accept and pin an unknown host key
    # Where the eval (trials, baseline, canary) runs: "local" loads eval_model (or model) here;
    # "node" runs it on the node against `model` there, for a base model this machine cannot hold.
    eval_on: Literal["local", "node"] = "local"

    @model_validator(mode="after")
    def _eval_on_needs_a_node(self) -> "ModeSettings":
        if self.eval_on == "node" and not self.host:
            raise ValueError("eval_on = \"node\" needs a training node: set host (full mode)")
        return self

    @field_validator("host")
    @classmethod
    def _ssh_host(cls, v: str) -> str:
        if v.startswith("-") or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a host name")
        return v

    @property
    def local_model(self) -> str:
        """The base model folder the eval (and the baseline) load: on this machine, or on the
        node with eval_on = "node"."""
        return self.model if self.eval_on == "node" else (self.eval_model or self.model)


class ModesSettings(_Strict):
    default: Literal["auto", "proxy", "full"] = "auto"
    proxy: ModeSettings
    full: ModeSettings


class TrainSettings(_Strict):
    batch_size: int = Field(4, ge=1)
    val_every: int = Field(25, ge=1)
    val_batches: int = Field(4, ge=1)
    mask_prompt: bool = True
    iters_scale: float = Field(1.0, gt=0, le=1)
    # LEARNING_RATE is multiplied by this when training: the ranges are set for the owner's
    # 9B; a model a hundred times smaller needs a larger LoRA step (the demo's tiny model).
    lr_scale: float = Field(1.0, gt=0, le=100)


class EvalSettings(_Strict):
    max_tokens: int = Field(32, ge=1)
    seed: int = 0


class PathSettings(_Strict):
    sessions: str = "sessions"
    data: str = "data"
    experimental: str = "adapters-experimental"
    adapters: str = "adapters"
    results: str = "results.tsv"
    logs: str = "logs"
    cache: str = ".cache"
    artifacts: str = "artifacts"   # optuna-dashboard's --artifact-dir
    reports: str = "reports"


class CorpusSettings(_Strict):
    near_dup_threshold: float = Field(0.8, gt=0, le=1)
    shingle_size: int = Field(3, ge=1)
    num_perm: int = Field(128, ge=16)
    caps: dict[str, float] = {"identity": 0.4}
    max_chars: int = Field(6000, ge=100)
    valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    include_synthetic: bool = True
    contamination_n: int = Field(8, ge=1)
    contamination_threshold: float = Field(0.5, gt=0, le=1)
    generator_model: str = ""
    generator_api_base: str = ""
    generator_api_key_env: str = ""
    generator_per_example: int = Field(1, ge=1)
    generator_limit: int = Field(100, ge=0)
    generator_temperature: float = Field(0.7, ge=0)
    generator_max_tokens: int = Field(64, ge=1)
    generator_timeout_s: float = Field(30.0, gt=0)


class ProposerSettings(_Strict):
    """An LLM that proposes a share of the searched trials (study/proposer.py), configured
    like the corpus generator: a LiteLLM model name, its api_base, the NAME of the
    environment variable holding its key (never the key)."""
    enabled: bool = False
    model: str = ""                     # e.g. "openai/default_model" (a local mlx_lm server)
    api_base: str = ""                  # e.g. "http://127.0.0.1:8080/v1"
    api_key_env: str = ""
    timeout_s: float = Field(60.0, gt=0)
    share: float = Field(0.3, gt=0, le=1)           # of the searched trials, after the warm start
    max_tokens_per_night: int = Field(40000, ge=0)  # prompt + reply tokens, all workers together
    max_tokens: int = Field(300, ge=16)             # one reply
    temperature: float = Field(0.2, ge=0)
    max_rows: int = Field(40, ge=1)                 # trials shown in the brief (the latest, plus the best)
    # A proposal runs only if the default sampler's model rates it (expected improvement x
    # P(feasible)) at least this share of its own next pick; 0: every valid proposal runs.
    screen: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _needs_a_model(self) -> "ProposerSettings":
        if self.enabled and not self.model:
            raise ValueError("enabled = true needs a model (a LiteLLM model name)")
        return self


class VaultSettings(_Strict):
    root: str = "~/.sanctum/memory"
    retention: int = Field(500, ge=1)


class ServingSettings(_Strict):
    backend: Literal["none", "managed", "launchd", "command"] = "none"
    # managed: the project runs `python -m mlx_lm server` itself (adapters/current).
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    allow_remote: bool = False          # bind another host than loopback only when true
    start_timeout_s: float = Field(120, gt=0)
    stop_timeout_s: float = Field(30, gt=0)
    # launchd: the user's own council-mlx LaunchAgent.
    label: str = "com.sanctum.council-mlx"
    # command: the user's own stop/start commands (argv lists, no shell).
    stop_command: list[str] = []
    start_command: list[str] = []
    health_url: str = ""                # default: http://<host>:<port>/health

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        return v


class ScheduleSettings(_Strict):
    start: str = "02:00"                # when launchd/systemd start the night
    label: str = "com.sanctum.autoresearch"
    keep_logs: int = Field(30, ge=1)    # nights of logs/<date>/ kept

    @field_validator("start")
    @classmethod
    def _start(cls, v: str) -> str:
        parse_hhmm(v)
        return v


class WorkersSettings(_Strict):
    # How this machine's adapters/current follows what another worker promoted:
    #   shared: [paths] adapters is one folder every worker mounts (nothing to fetch)
    #   fetch:  rsync over ssh from the worker that trained it
    adapters: Literal["shared", "fetch"] = "shared"
    ssh_config: str = ""                       # ssh -F for fetching (relative to this file); empty: ssh's own
    hosts: dict[str, str] = {}                 # a worker's hostname (as the study records it) → ssh Host
    accept_new_host_key: bool = False


class DemoModelSettings(_Strict):
    """One demo model's own sizes over [demo]'s: a real model trains and evaluates slower
    than the tiny one (unset: [demo]'s value)."""
    budget_s: float | None = Field(None, gt=0)
    eval_s: float | None = Field(None, gt=0)
    iters_scale: float | None = Field(None, gt=0, le=1)
    lr_scale: float | None = Field(None, gt=0, le=100)
    window_min: float | None = Field(None, gt=0)


class DemoSettings(_Strict):
    # Everything a demo night writes (study, adapters, data, results, logs, reports,
    # artifacts, vault, serving state) lives under this folder; only the demo model stays
    # in [paths] cache. A demo never touches a real setup's files.
    root: str = "demo-run"
    pretrain_s: float = Field(100, gt=0)
    model: Literal["demo", "smollm2"] = "demo"   # the tiny model built here, or SmolLM2 (demo/)
    mode: Literal["proxy", "full"] = "proxy"
    budget_s: float = Field(240, gt=0)
    eval_s: float = Field(40, gt=0)
    iters_scale: float = Field(0.5, gt=0, le=1)
    lr_scale: float = Field(10.0, gt=0, le=100)
    vault_root: str = "demo-vault"
    window_min: float = Field(60, gt=0)   # the demo's night ends this long after it starts
    models: dict[Literal["demo", "smollm2"], DemoModelSettings] = {}   # [demo.models.<model>]

    def for_model(self) -> "DemoSettings":
        """These settings with [demo.models.<model>] applied."""
        over = self.models.get(self.model)
        if over is None:
            return self
        return self.model_copy(update={k: v for k, v in over.model_dump().items()
                                       if v is not None and k in DemoSettings.model_fields})


class Settings(_Strict):
    study: StudySettings = StudySettings()
    gate: GateSettings = GateSettings()
    modes: ModesSettings
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    paths: PathSettings = PathSettings()
    corpus: CorpusSettings = CorpusSettings()
    proposer: ProposerSettings = ProposerSettings()
    vault: VaultSettings = VaultSettings()
    serving: ServingSettings = ServingSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    workers: WorkersSettings = WorkersSettings()
    demo: DemoSettings = DemoSettings()

    # Not from the file: where it was read, and whether the demo overlay is on.
    root: Path = Path(".")
    file: str = "autoresearch.toml"
    is_demo: bool = False

    def path(self, rel: str) -> Path:
        """A configured path, resolved against the config file's folder (~ expanded)."""
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.root / p

    def with_demo(self) -> "Settings":
        d = self.demo.for_model()
        s = self.model_copy(deep=True)
        s.modes.default = d.mode
        for m in (s.modes.proxy, s.modes.full):
            m.model, m.budget_s, m.eval_s = d.model, d.budget_s, d.eval_s
        s.modes.full.host, s.modes.full.eval_on = "", "local"  # the demo never leaves this machine
        s.train.iters_scale, s.train.lr_scale = d.iters_scale, d.lr_scale
        root = Path(d.root)
        if s.study.storage.startswith("sqlite:///"):
            # A database server (several workers) keeps the demo's study apart by its name.
            s.study.storage = f"sqlite:///{root / 'autoresearch.db'}"
        default = PathSettings()
        for key in ("data", "experimental", "adapters", "results", "logs", "artifacts", "reports"):
            setattr(s.paths, key, str(root / getattr(default, key)))
        s.vault.root = str(root / d.vault_root)
        if s.serving.backend in ("launchd", "command"):
            # The user's own council-mlx serves the real adapters/current: a demo leaves it alone.
            s.serving.backend = "none"
        s.is_demo = True
        return s

    def state_dir(self) -> Path:
        """Where serving keeps its PID file and what it last started: the demo's apart."""
        return self.path(self.demo.root) / "cache" if self.is_demo else self.path(self.paths.cache)

    def storage_url(self) -> str:
        """SQLite paths are resolved against the config folder like every other path."""
        url = self.study.storage
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
            return prefix + str(self.path(url[len(prefix):]))
        return url


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"])


def parse_settings(data: dict[str, Any], file: str, root: Path) -> Settings:
    try:
        s = Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(file, _loc(err), msg) from None
    s.root, s.file = root, file
    return s


def load_settings(path: str | Path = "autoresearch.toml", *, demo: bool = False,
                  demo_model: str | None = None) -> Settings:
    """demo_model: the demo's model in place of [demo] model (--demo-model)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"TOML syntax error: {exc}") from None
    for key in ("root", "file", "is_demo"):
        if key in data:
            raise ConfigError(str(path), key, "unknown key")
    s = parse_settings(data, str(path), path.resolve().parent)
    if demo_model:
        s.demo = DemoSettings.model_validate({**s.demo.model_dump(), "model": demo_model})
    return s.with_demo() if demo else s
