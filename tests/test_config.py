"""Configuration files: the shipped ones load, program.md agrees with search_space.yaml,
and bad input names the file and key."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from common.council import load_council
from common.errors import ConfigError
from study.config import load_settings
from study.space import PARAM_TO_SPEC, load_search_space, parse_search_space

ROOT = Path(__file__).resolve().parents[1]


def _program_table() -> dict[str, dict[str, str]]:
    text = (ROOT / "program.md").read_text()
    section = text.split("## Search space", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"[A-Z_]+", cells[0]) and cells[0] != "Parameter":
            rows[cells[0]] = {"range": cells[1], "scale": cells[2], "baseline": cells[3]}
    return rows


def test_program_md_agrees_with_search_space():
    space = load_search_space(ROOT / "search_space.yaml")
    table = _program_table()
    assert set(table) == set(space.params) == set(PARAM_TO_SPEC)
    for name, p in space.params.items():
        low, high = (float(x) for x in table[name]["range"].replace("–", "-", 1).split("-", 1)) \
            if "e-" not in table[name]["range"] else (float(x) for x in table[name]["range"].split("–"))
        assert (low, high) == (p.low, p.high), name
        assert float(table[name]["baseline"]) == p.baseline, name
        assert table[name]["scale"] == ("log" if p.log else "linear"), name


def test_program_md_full_mode_cap_matches_override():
    space = load_search_space(ROOT / "search_space.yaml")
    assert space.for_mode("full")["NUM_LAYERS"].high == 32
    assert "≤ 32" in (ROOT / "program.md").read_text()


def test_shipped_configs_load():
    s = load_settings(ROOT / "autoresearch.toml")
    assert s.study.max_trials == 4 and s.study.deadline == "05:00"
    d = load_settings(ROOT / "autoresearch.toml", demo=True)
    assert d.is_demo and d.modes.proxy.model == "demo" and d.modes.full.host == ""
    council = load_council(ROOT / "council.yaml")
    assert len(council.agents) == 7
    for a in council.agents:
        assert a.tools and a.private_facts and a.domain_facts


def test_warm_start_starts_with_baseline_and_respects_mode():
    space = load_search_space(ROOT / "search_space.yaml")
    cfgs = space.warm_start_configs("full")
    assert cfgs[0] == space.baseline("full")
    assert all(c["NUM_LAYERS"] <= 32 for c in cfgs)
    assert len({tuple(sorted(c.items())) for c in cfgs}) == len(cfgs)


GOOD = yaml.safe_load((ROOT / "search_space.yaml").read_text())


def _bad(mutate):
    data = yaml.safe_load((ROOT / "search_space.yaml").read_text())
    mutate(data)
    return data


@pytest.mark.parametrize("mutate, key, words", [
    (lambda d: d["parameters"].update(FOO={"type": "int", "low": 1, "high": 2, "baseline": 1}), "parameters.FOO", "unknown"),
    (lambda d: d["parameters"]["LORA_RANK"].update(low=64, high=8), "parameters.LORA_RANK", "inverted"),
    (lambda d: d["parameters"]["DROPOUT"].update(baseline=0.5), "parameters.DROPOUT.baseline", "outside"),
    (lambda d: d["parameters"]["ITERS"].update(type="str"), "parameters.ITERS.type", "int or float"),
    (lambda d: d["parameters"]["ITERS"].update(low="ten"), "parameters.ITERS.low", "number"),
    (lambda d: d["parameters"].pop("GRAD_ACCUM"), "parameters.GRAD_ACCUM", "missing"),
    (lambda d: d["modes"]["full"]["NUM_LAYERS"].update(high=64), "modes.full.NUM_LAYERS", "part of"),
    (lambda d: d.update(extra=1), "extra", "unknown"),
    (lambda d: d["warm_start"].insert(0, {"LEARNING_RATE": 1.0}), "warm_start[0].LEARNING_RATE", "outside"),
])
def test_search_space_errors_name_file_and_key(mutate, key, words):
    with pytest.raises(ConfigError) as exc:
        parse_search_space(_bad(mutate), "search_space.yaml")
    assert exc.value.file == "search_space.yaml" and exc.value.key == key
    assert words in exc.value.problem


@pytest.mark.parametrize("table, key, value, words", [
    ("study", "max_trials", "four", "integer"),
    ("study", "deadline", "25:99", "25:99"),
    ("study", "storage", "mongodb://x", "mongodb"),
    ("study", "max_trial", 4, "unknown key"),
    ("gate", "jailbreak_floor", 1.5, "less than or equal"),
    ("serving", "backend", "docker", "'none'"),
    ("modes", "default", "cloud", "auto"),
])
def test_settings_errors_name_file_and_key(table, key, value, words):
    import tomllib
    from study.config import parse_settings
    data = tomllib.loads((ROOT / "autoresearch.toml").read_text())
    data.setdefault(table, {})[key] = value
    with pytest.raises(ConfigError) as exc:
        parse_settings(data, "autoresearch.toml", ROOT)
    assert exc.value.file == "autoresearch.toml" and exc.value.key == f"{table}.{key}", str(exc.value)
    assert words in str(exc.value)


def test_toml_syntax_error_names_file(tmp_path):
    f = tmp_path / "autoresearch.toml"
    f.write_text("[study\nmax_trials = 4\n")
    with pytest.raises(ConfigError, match="TOML syntax error") as exc:
        load_settings(f)
    assert exc.value.file == str(f)


def test_council_errors_name_the_agent(tmp_path):
    data = yaml.safe_load((ROOT / "council.yaml").read_text())
    data["agents"][1]["tools"][0]["parameters"] = {"type": "string"}
    f = tmp_path / "council.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_council(f)
    assert "agents[1:windu].tools[0:scan_ports].parameters" == exc.value.key
