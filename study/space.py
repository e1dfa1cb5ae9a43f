"""search_space.yaml: the searched parameters, their ranges, baselines and mode overrides."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError, load_yaml_file

# The nine knobs and what train_core / the corpus call them.
PARAM_TO_SPEC = {
    "NUM_LAYERS": "num_layers",
    "LORA_RANK": "lora_rank",
    "LORA_ALPHA": "lora_alpha",
    "DROPOUT": "dropout",
    "LEARNING_RATE": "learning_rate",
    "ITERS": "iters",
    "GRAD_ACCUM": "grad_accum",
    "MAX_SEQ_LENGTH": "max_seq_length",
    "DATA_MIX_RATIO": "mix_ratio",
}
_FIELDS = {"type", "low", "high", "baseline", "log", "step"}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float
    high: float
    baseline: float
    log: bool = False
    step: int | None = None

    def clamp(self, value: float) -> float:
        v = min(max(value, self.low), self.high)
        if self.type == "int":
            v = int(round(v))
            if self.step:
                v = int(self.low + round((v - self.low) / self.step) * self.step)
                v = min(v, int(self.high))
        return v

    def suggest(self, trial) -> float:
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    file: str
    params: dict[str, Param]
    mode_overrides: dict[str, dict[str, dict[str, float]]]
    warm_start: list[dict[str, float]]

    def for_mode(self, mode: str) -> dict[str, Param]:
        out = dict(self.params)
        for name, bounds in self.mode_overrides.get(mode, {}).items():
            p = replace(out[name], **bounds)
            out[name] = replace(p, baseline=p.clamp(p.baseline))
        return out

    def baseline(self, mode: str) -> dict[str, float]:
        return {n: p.baseline for n, p in self.for_mode(mode).items()}

    def warm_start_configs(self, mode: str) -> list[dict[str, float]]:
        """The baseline, then each known-good move applied to it and clamped to the mode."""
        params = self.for_mode(mode)
        base = self.baseline(mode)
        configs = [base]
        for move in self.warm_start:
            cfg = dict(base)
            cfg.update({k: params[k].clamp(v) for k, v in move.items()})
            if cfg not in configs:
                configs.append(cfg)
        return configs

    def suggest(self, trial, mode: str) -> dict[str, float]:
        return {n: p.suggest(trial) for n, p in self.for_mode(mode).items()}


def _num(file: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(file, key, f"must be a finite number, got {v!r}")
    return v


def _check_param(file: str, name: str, raw: Any) -> Param:
    key = f"parameters.{name}"
    if name not in PARAM_TO_SPEC:
        raise ConfigError(file, key, f"unknown parameter (known: {', '.join(PARAM_TO_SPEC)})")
    if not isinstance(raw, dict):
        raise ConfigError(file, key, "must be a mapping with type, low, high, baseline")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(file, f"{key}.{sorted(unknown)[0]}", "unknown key")
    for req in ("type", "low", "high", "baseline"):
        if req not in raw:
            raise ConfigError(file, f"{key}.{req}", "missing")
    if raw["type"] not in ("int", "float"):
        raise ConfigError(file, f"{key}.type", f"must be int or float, got {raw['type']!r}")
    low, high, base = (_num(file, f"{key}.{k}", raw[k]) for k in ("low", "high", "baseline"))
    if low >= high:
        raise ConfigError(file, key, f"inverted range: low {low} >= high {high}")
    if not low <= base <= high:
        raise ConfigError(file, f"{key}.baseline", f"{base} outside range [{low}, {high}]")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(file, f"{key}.log", f"must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(file, f"{key}.log", "log scale needs low > 0")
    step = raw.get("step")
    if step is not None and (raw["type"] != "int" or not isinstance(step, int) or step < 1):
        raise ConfigError(file, f"{key}.step", f"must be a positive int on an int parameter, got {step!r}")
    return Param(name, raw["type"], low, high, base, log, step)


def parse_search_space(data: Any, file: str = "search_space.yaml") -> SearchSpace:
    if not isinstance(data, dict):
        raise ConfigError(file, None, "must be a mapping with a 'parameters' key")
    unknown = set(data) - {"parameters", "modes", "warm_start"}
    if unknown:
        raise ConfigError(file, sorted(unknown)[0], "unknown key")
    raw_params = data.get("parameters")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(file, "parameters", "missing or empty")
    params = {n: _check_param(file, n, r) for n, r in raw_params.items()}
    missing = [n for n in PARAM_TO_SPEC if n not in params]
    if missing:
        raise ConfigError(file, f"parameters.{missing[0]}", "missing")

    overrides: dict[str, dict[str, dict[str, float]]] = {}
    for mode, table in (data.get("modes") or {}).items():
        if mode not in ("proxy", "full"):
            raise ConfigError(file, f"modes.{mode}", "unknown mode (proxy or full)")
        overrides[mode] = {}
        for name, bounds in (table or {}).items():
            key = f"modes.{mode}.{name}"
            if name not in params:
                raise ConfigError(file, key, "unknown parameter")
            if not isinstance(bounds, dict) or not bounds or set(bounds) - {"low", "high"}:
                raise ConfigError(file, key, "must set only low and/or high")
            p = params[name]
            low = _num(file, f"{key}.low", bounds.get("low", p.low))
            high = _num(file, f"{key}.high", bounds.get("high", p.high))
            if not p.low <= low < high <= p.high:
                raise ConfigError(file, key, f"[{low}, {high}] must be a non-empty part of [{p.low}, {p.high}]")
            overrides[mode][name] = {"low": low, "high": high}

    warm = data.get("warm_start") or []
    if not isinstance(warm, list):
        raise ConfigError(file, "warm_start", "must be a list of parameter mappings")
    for i, move in enumerate(warm):
        if not isinstance(move, dict) or not move:
            raise ConfigError(file, f"warm_start[{i}]", "must be a non-empty mapping")
        for name, v in move.items():
            if name not in params:
                raise ConfigError(file, f"warm_start[{i}].{name}", "unknown parameter")
            p = params[name]
            _num(file, f"warm_start[{i}].{name}", v)
            if not p.low <= v <= p.high:
                raise ConfigError(file, f"warm_start[{i}].{name}", f"{v} outside range [{p.low}, {p.high}]")
    return SearchSpace(file, params, overrides, warm)


def load_search_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    data = load_yaml_file(path)
    return parse_search_space(data, str(path))
