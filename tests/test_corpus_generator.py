"""LLM paraphrases through LiteLLM, against a real `mlx_lm server` serving the demo model
(started once for this module, stopped by PID), and the validation that keeps a tiny
model's poor output out of the corpus."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.council import load_council
from common.errors import ConfigError
from corpus import prepare
from corpus.paraphrase import REJECT_REASONS, validate
from demo.sessions import write_sessions
from netutil import free_port, mlx_server

REPO = Path(__file__).resolve().parent.parent
COUNCIL = REPO / "council.yaml"


@pytest.fixture(scope="module")
def server(demo_assets, tmp_path_factory):
    with mlx_server(demo_assets.model_dir, tmp_path_factory.mktemp("server") / "server.log") as api:
        yield api


def test_paraphrases_from_a_real_server_are_validated_and_counted(server, tmp_path):
    council = load_council(COUNCIL)
    sessions = write_sessions(council, tmp_path / "sessions", seed=0)
    kwargs = dict(generator_model="openai/default_model", generator_api_base=server,
                  generator_limit=3, generator_max_tokens=16, generator_temperature=0.0)
    data = prepare(sessions, COUNCIL, tmp_path / "data", **kwargs)
    g = data.manifest["generator"]
    assert g["enabled"] and g["asked"] == 3
    assert g["rejected"]["error"] == 0, "the server answered every call"
    assert g["accepted"] + sum(g["rejected"].values()) == 3
    assert set(g["rejected"]) == set(REJECT_REASONS)
    assert data.manifest["raw"]["by_method"].get("paraphrase", 0) == g["accepted"]
    assert data.manifest["settings"]["generator"]["model"] == "openai/default_model"
    rows = [r for s in ("train", "valid", "test", "unused") for r in data.rows(s)]
    for r in rows:
        assert "_keep" not in r
        if r.get("method") == "paraphrase":
            user = r["messages"][1]["content"]
            assert validate(user + " (orig)", user, [], r["messages"][2]["content"])[1] is None
    # Same settings: the cached folder, no new calls. Another generator: another corpus.
    again = prepare(sessions, COUNCIL, tmp_path / "data", **kwargs)
    assert again.hash == data.hash and again.manifest["created"] == data.manifest["created"]
    plain = prepare(sessions, COUNCIL, tmp_path / "data")
    assert plain.hash != data.hash and not plain.manifest["generator"]["enabled"]


def test_a_generator_that_never_answers_is_a_config_error(tmp_path):
    council = load_council(COUNCIL)
    sessions = write_sessions(council, tmp_path / "sessions", seed=0)
    with pytest.raises(ConfigError, match="generator_model.*failed every call"):
        prepare(sessions, COUNCIL, tmp_path / "data", generator_model="openai/default_model",
                generator_api_base=f"http://127.0.0.1:{free_port()}/v1", generator_limit=2,
                generator_timeout_s=5)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        prepare(sessions, COUNCIL, tmp_path / "data", generator_model="openai/x",
                generator_api_key_env="NO_SUCH_KEY_VAR")


@pytest.mark.parametrize("reply, keep, reason", [
    ("<think>hmm</think>Kindly run plan_experiment using learning_rate 1.5, layers 52.",
     ["1.5", "52"], None),
    ("Kindly run plan_experiment using learning_rate 1.5.", ["1.5", "52"], "lost_value"),
    ("", [], "empty"),
    ("Run.", [], "too_short"),
    ("Please use plan_experiment with learning_rate 1.5 and layers 52.", ["1.5", "52"], "unchanged"),
    ("Sure!\nRun plan_experiment with learning_rate 1.5 and layers 52.", ["1.5", "52"], "multi_line"),
    ("the lead the lead the lead of the lead 1.5 52", ["1.5", "52"], "degenerate"),
    ("I lead,. plan_experiment 1.5 and 52 the.. now", ["1.5", "52"], "degenerate"),
    ("Run " + "very " * 60 + "1.5 52", ["1.5", "52"], "too_long"),
    ('Do <tool_call>{"name": "plan_experiment"}</tool_call> with 1.5 and 52', ["1.5", "52"],
     "leaks_answer"),
])
def test_validate(reply, keep, reason):
    original = "Please use plan_experiment with learning_rate 1.5 and layers 52."
    answer = '<tool_call>{"name": "plan_experiment", "arguments": {"learning_rate": 1.5, "layers": 52}}</tool_call>'
    text, got = validate(original, reply, keep, answer)
    assert got == reason, text
    if reason is None:
        assert "<think>" not in text and text.startswith("Kindly")
