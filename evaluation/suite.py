"""The eval suite: YAML case files under evaluation/suite/, validated on load.

A file holds `cases:`, a list of mappings. Every case has `id`, `agent`, `category`,
`split` (dev|holdout), `prompt`, `scorer`, and the fields its scorer declares (see
evaluation.scorers.SCORERS). Bad input raises ConfigError(file, "cases[i:id].key", problem).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.council import CATEGORIES, Council
from common.errors import ConfigError

from .scorers import SCORERS

SPLITS = ("dev", "holdout")
# libyaml's loader parses the suite ~10x faster than PyYAML's pure-Python one (1.2 s of a
# smoke run's 3 s went to parsing 210 cases); same safe constructor, same result.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_SUITE_DIR = Path(__file__).resolve().parent / "suite"


class _Head(BaseModel):
    """The fields every case has, whatever its scorer."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    agent: str
    category: Literal[CATEGORIES]  # type: ignore[valid-type]
    split: Literal[SPLITS]  # type: ignore[valid-type]
    prompt: str = Field(min_length=1)
    scorer: str
    max_tokens: Optional[int] = Field(default=None, ge=1, le=4096)
    note: Optional[str] = None  # free text for people editing the suite by hand


@dataclass(frozen=True)
class Case:
    id: str
    agent: str
    category: str
    split: str
    prompt: str
    scorer: str
    fields: Any  # the scorer's pydantic fields model
    max_tokens: int | None = None
    file: str = ""

    @property
    def needs(self) -> str:
        return SCORERS[self.scorer].needs


def _err_key(i: int, raw: Any, loc: Iterable[Any] = ()) -> str:
    cid = raw.get("id") if isinstance(raw, dict) else None
    key = f"cases[{i}:{cid}]" if isinstance(cid, str) else f"cases[{i}]"
    for p in loc:
        key += f"[{p}]" if isinstance(p, int) else f".{p}"
    return key


def parse_case(raw: Any, i: int, file: str, agents: Iterable[str]) -> Case:
    if not isinstance(raw, dict):
        raise ConfigError(file, _err_key(i, raw), "a case must be a mapping")
    head_keys = set(_Head.model_fields)
    head_raw = {k: v for k, v in raw.items() if k in head_keys}
    rest = {k: v for k, v in raw.items() if k not in head_keys}
    scorer = raw.get("scorer")
    if scorer not in SCORERS:
        raise ConfigError(file, _err_key(i, raw, ["scorer"]),
                          f"unknown scorer {scorer!r} (known: {', '.join(sorted(SCORERS))})")
    try:
        head = _Head.model_validate(head_raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(file, _err_key(i, raw, err["loc"]), err["msg"]) from None
    agents = list(agents)
    if head.agent not in agents:
        raise ConfigError(file, _err_key(i, raw, ["agent"]),
                          f"unknown agent {head.agent!r} (council has: {', '.join(agents)})")
    try:
        fields = SCORERS[scorer].fields.model_validate(rest)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"not a field of scorer {scorer!r}"
        raise ConfigError(file, _err_key(i, raw, err["loc"]), msg) from None
    return Case(head.id, head.agent, head.category, head.split, head.prompt, head.scorer,
                fields, head.max_tokens, file)


def parse_cases(data: Any, file: str, council: Council) -> list[Case]:
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise ConfigError(file, "cases", "the file must be a mapping with a 'cases' list")
    extra = sorted(set(data) - {"cases"})
    if extra:
        raise ConfigError(file, extra[0], "unknown top-level key (only 'cases' is allowed)")
    return [parse_case(raw, i, file, council.names) for i, raw in enumerate(data["cases"])]


def load_file(path: Path, council: Council) -> list[Case]:
    try:
        data = yaml.load(path.read_text(), Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"YAML syntax error: {' '.join(str(exc).split())}") from None
    return parse_cases(data, str(path), council)


def check_coverage(cases: list[Case], council: Council, categories: Iterable[str],
                   min_dev: int, min_holdout: int, file: str | None = None) -> None:
    """Too few cases per agent and category let one case outweigh the gate's margin
    (26 cases: one case = 0.038 > 0.02), so a thin cell is refused, not averaged."""
    count = Counter((c.agent, c.category, c.split) for c in cases)
    for agent in council.names:
        for cat in categories:
            for split, need in (("dev", min_dev), ("holdout", min_holdout)):
                have = count[(agent, cat, split)]
                if have < need:
                    raise ConfigError(file, f"{agent}/{cat}/{split}",
                                      f"suite has {have} case(s), at least {need} needed")


def load_suite(suite_dir: str | Path, council: Council, *, splits: Iterable[str] = SPLITS,
               categories: Iterable[str] | None = None, min_dev_per_cell: int = 0,
               min_holdout_per_cell: int = 0) -> list[Case]:
    """Every `*.yaml` under suite_dir, validated, ids unique across files, filtered to
    `splits` and `categories`, in a stable order (file name, then position)."""
    root = Path(suite_dir)
    if not root.is_dir():
        raise ConfigError(str(root), None, "suite folder not found")
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    if not files:
        raise ConfigError(str(root), None, "no *.yaml case files in the suite folder")
    splits = tuple(splits)
    for s in splits:
        if s not in SPLITS:
            raise ConfigError(None, "splits", f"unknown split {s!r} (known: {', '.join(SPLITS)})")
    cats = tuple(categories) if categories is not None else CATEGORIES
    for c in cats:
        if c not in CATEGORIES:
            raise ConfigError(None, "categories", f"unknown category {c!r} (known: {', '.join(CATEGORIES)})")
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for path in files:
        for i, case in enumerate(load_file(path, council)):
            if case.id in seen:
                raise ConfigError(str(path), f"cases[{i}:{case.id}].id",
                                  f"duplicate id (first in {seen[case.id]})")
            seen[case.id] = path.name
            cases.append(case)
    if min_dev_per_cell or min_holdout_per_cell:
        check_coverage(cases, council, cats, min_dev_per_cell, min_holdout_per_cell, str(root))
    return [c for c in cases if c.split in splits and c.category in cats]


def smoke_cases(cases: list[Case], seed: int = 0) -> list[Case]:
    """One case per category, for a canary run before a long night: a dev case where
    there is one, picked with `seed`; where the suite has both log-likelihood and
    generation cases the pick covers both, so either path breaking shows. Judge cases are
    left out (they would be skipped without a judge). Returned in suite order."""
    rng = random.Random(seed)
    pool = [c for c in cases if c.needs != "judge"]
    by_cat: dict[str, list[Case]] = {}
    for c in pool:
        by_cat.setdefault(c.category, []).append(c)
    picks: dict[str, Case] = {}
    for cat, cs in by_cat.items():
        dev = [c for c in cs if c.split == "dev"] or cs
        picks[cat] = rng.choice(dev)
    for kind in sorted({c.needs for c in pool} - {p.needs for p in picks.values()}):
        kinds = Counter(p.needs for p in picks.values())
        for cat in sorted(picks):  # swap a category whose kind is also covered elsewhere
            options = [c for c in by_cat[cat] if c.needs == kind]
            if options and kinds[picks[cat].needs] > 1:
                dev = [c for c in options if c.split == "dev"] or options
                picks[cat] = rng.choice(dev)
                break
    chosen = {p.id for p in picks.values()}
    return [c for c in cases if c.id in chosen]


def cases_digest(cases: Iterable[Case]) -> str:
    """sha256 of the cases' content, in order: a journal made on another suite is refused."""
    import hashlib
    import json

    h = hashlib.sha256()
    for c in cases:
        h.update(json.dumps([c.id, c.agent, c.category, c.split, c.prompt, c.scorer, c.max_tokens,
                             c.fields.model_dump(mode="json")], sort_keys=True).encode())
    return h.hexdigest()
