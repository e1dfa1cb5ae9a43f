"""The proposer (study/proposer.py): real LiteLLM calls over real HTTP on 127.0.0.1, to a
real `mlx_lm server` serving the demo model (whose answers are not valid proposals) and to
a stand-in OpenAI-compatible server written here (a fixed chat completion, so that a valid
proposal exists to enqueue); a real SQLite study and the real default sampler."""
from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import pytest

from study.config import ProposerSettings
from study.proposer import (FALLBACK, OUTCOME, PROPOSED, PROPOSER, Proposer, Rejected, check_config,
                            is_turn, litellm_complete, parse_reply, report_lines, searched)
from study.sampler import MOVE_KEY
from study.space import load_search_space
from study.storage import open_storage, open_study
from study.workers import run_night

from netutil import free_port, mlx_server

ROOT = Path(__file__).resolve().parents[1]
SPACE = load_search_space(ROOT / "search_space.yaml")
GOOD = {"NUM_LAYERS": 24, "LORA_RANK": 16, "LORA_ALPHA": 32, "DROPOUT": 0.0, "LEARNING_RATE": 5e-5,
        "ITERS": 400, "GRAD_ACCUM": 2, "MAX_SEQ_LENGTH": 512, "DATA_MIX_RATIO": 0.3}


class StandIn:
    """An OpenAI-compatible /v1/chat/completions on a free loopback port that answers
    `reply` after `delay` seconds, and keeps what it was sent."""

    def __init__(self):
        self.reply, self.delay, self.requests = "", 0.0, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"auth": self.headers.get("Authorization"), "body": body})
                time.sleep(outer.delay)
                data = json.dumps({
                    "id": "stand-in", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": outer.reply}}],
                    "usage": {"prompt_tokens": 900, "completion_tokens": 60, "total_tokens": 960}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass      # the client gave up (the timeout case)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def stand_in():
    s = StandIn()
    yield s
    s.close()


def settings(api_base: str, **kw) -> ProposerSettings:
    return ProposerSettings(enabled=True, model="openai/stand-in", api_base=api_base,
                            **{"share": 1.0, "timeout_s": 20.0, "screen": 0.0, **kw})


def toy(trial: optuna.Trial) -> float:
    """A cheap objective with the user attrs objective.py records."""
    p = SPACE.suggest(trial, "proxy")
    score = 0.5 + 0.1 * math.log10(p["LEARNING_RATE"] / 1e-6) / 2 - 0.001 * abs(p["NUM_LAYERS"] - 32)
    for k, v in {"score": round(score, 4), "baseline": 0.5, "feasible": True, "result": "reverted",
                 "reasons": ["toy"], "per_category": {"jailbreak": score}, "per_agent": {"yoda": score}}.items():
        trial.set_user_attr(k, v)
    return score


@pytest.fixture
def warm_study(tmp_path):
    """A SQLite study whose warm start has run (4 trials, night n1)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(open_storage(url), "council-proxy-test", n_startup_trials=4, space=SPACE, mode="proxy")
    run_night(study, url, "n1", 4, toy, warm_start_configs=SPACE.warm_start_configs("proxy"))
    return study, url


def proposer_for(s: ProposerSettings, **kw) -> Proposer:
    program_md = kw.pop("program_md", (ROOT / "program.md").read_text())
    return Proposer(s, SPACE, "proxy", program_md=program_md,
                    complete=kw.pop("complete", None) or litellm_complete(s),
                    warm_start_configs=SPACE.warm_start_configs("proxy"), **kw)


def queued(study: optuna.Study) -> optuna.trial.FrozenTrial:
    (t,) = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    return t


# -- which trials --------------------------------------------------------------------

def test_the_share_is_exact_and_deterministic():
    turns = [n for n in range(100) if is_turn(n, 0.3)]
    assert len(turns) == 30 and turns[:4] == [3, 6, 9, 13]
    assert all(is_turn(n, 1.0) for n in range(10)) and not any(is_turn(n, 0.3) for n in range(3))


def test_warm_start_and_retries_come_first(warm_study, stand_in):
    study, url = warm_study
    p = proposer_for(settings(stand_in.url))
    assert not any(searched(t) for t in study.trials)          # the warm start is not searched
    study.enqueue_trial(GOOD)                                  # a queued config waits: it runs first
    assert p.before_slot(study, "n2", 4) is None
    run_night(study, url, "n2", 1, toy)
    assert p.turn(study, "n2", 1) is None                      # tonight's cap is reached
    assert p.turn(study, "n2", 4) == 0


# -- the answer -----------------------------------------------------------------------

def test_parse_reply_reads_fenced_json_after_a_reasoning_block():
    text = '<think>lr is low</think>Here:\n```json\n{"config": {"A": 1}, "hypothesis": " More  lr helps. "}\n```'
    assert parse_reply(text) == ({"A": 1}, "More lr helps.")
    for bad, reason in [("I cannot help with that.", "no JSON object"), ('{"config": {"A": 1,}', "malformed JSON"),
                        ('{"hypothesis": "x"}', 'no "config"'), ('{"config": {}, "hypothesis": ""}', "no \"hypothesis\"")]:
        with pytest.raises(Rejected, match=reason):
            parse_reply(bad)


@pytest.mark.parametrize("change, mode, reason", [
    ({"NUM_LAYERS": 64}, "proxy", r"NUM_LAYERS=64 is outside \[16, 48\]"),
    ({"NUM_LAYERS": 40}, "full", r"NUM_LAYERS=40 is outside \[16, 32\] in full mode"),
    ({"ITERS": 425}, "proxy", r"ITERS=425 is off its grid \(step 50"),
    ({"LORA_RANK": 16.5}, "proxy", "LORA_RANK=16.5 is not an integer"),
    ({"DROPOUT": True}, "proxy", "DROPOUT=True is not a number"),
    ({"DROPOUT": "0.1"}, "proxy", "is not a number"),
    ({"BATCH": 8}, "proxy", "unknown parameter 'BATCH'"),
])
def test_check_config_names_the_first_problem(warm_study, change, mode, reason):
    study, _ = warm_study
    with pytest.raises(Rejected, match=reason):
        check_config({**GOOD, **change}, SPACE, mode, study)
    cfg = dict(GOOD)
    del cfg["DROPOUT"]
    with pytest.raises(Rejected, match="missing parameter DROPOUT"):
        check_config(cfg, SPACE, "proxy", study)


def test_check_config_refuses_known_ooms_and_exact_repeats(warm_study):
    study, _ = warm_study
    assert check_config({**GOOD, "NUM_LAYERS": 24.0}, SPACE, "proxy", study) == GOOD   # 24.0 is the int 24
    with pytest.raises(Rejected, match="an exact repeat of trial 0"):
        check_config(SPACE.baseline("proxy"), SPACE, "proxy", study)
    oom = {**GOOD, "NUM_LAYERS": 48, "MAX_SEQ_LENGTH": 1280}
    study.add_trial(optuna.trial.create_trial(
        params=oom, distributions={k: d for k, d in study.trials[0].distributions.items()}, value=0.0,
        user_attrs={"result": "failed:oom"}))
    with pytest.raises(Rejected, match="ran out of memory in trial 4"):
        check_config(oom, SPACE, "proxy", study)


# -- through LiteLLM, over HTTP ----------------------------------------------------------

def test_a_valid_proposal_is_enqueued_and_run(warm_study, stand_in):
    study, url = warm_study
    stand_in.reply, stand_in.delay = json.dumps({"config": GOOD, "hypothesis": "Fewer layers at lr 5e-5 keep jailbreak."}), 0
    p = proposer_for(settings(stand_in.url))
    number = p.before_slot(study, "n2", 4)
    t = queued(study)
    assert t.number == number and t.user_attrs[PROPOSER]["status"] == PROPOSED
    assert t.user_attrs[PROPOSER]["hypothesis"] == "Fewer layers at lr 5e-5 keep jailbreak."
    assert t.user_attrs[PROPOSER]["tokens"] == 960            # the server's usage
    sent = stand_in.requests[-1]["body"]
    assert sent["model"] == "stand-in" and "# Trials so far" in sent["messages"][1]["content"]
    assert "Lessons" in sent["messages"][1]["content"] and "LEARNING_RATE: float in [1e-06, 0.0001] log" in sent["messages"][1]["content"]

    def objective(trial):
        value = toy(trial)
        p.on_finish(trial)          # as the night's on_finish does, before the trial is told
        return value
    run_night(study, url, "n2", 1, objective)
    done = study.trials[number]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.params == GOOD
    assert done.user_attrs[OUTCOME].startswith("reverted: score")
    from optuna_dashboard._note import get_note_from_system_attrs
    body = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), done._trial_id)["body"]
    assert "Fewer layers at lr 5e-5" in body and "Outcome:" in body
    # The same answer next time is an exact repeat: the sampler runs that trial.
    p.before_slot(study, "n2", 4)
    assert queued(study).user_attrs[PROPOSER]["reason"] == f"an exact repeat of trial {number}"
    run_night(study, url, "n2", 2, objective)
    lines = report_lines(study.trials)
    assert lines[0] == "## Proposals" and len(lines) == 4 + 2 + 1
    assert "Fewer layers at lr 5e-5" in lines[4] and f"| sampler | an exact repeat of trial {number} |" in lines[5]


@pytest.mark.parametrize("reply, reason", [
    ('{"config": {"NUM_LAYERS": 24, ', "malformed JSON"),
    (json.dumps({"config": {**GOOD, "LEARNING_RATE": 0.5}, "hypothesis": "Much more lr."}),
     r"LEARNING_RATE=0.5 is outside \[1e-06, 0.0001\]"),
    ("I can't help with hyperparameters.", "no JSON object in the answer"),
])
def test_bad_answers_fall_back_to_the_sampler_with_the_reason(warm_study, stand_in, reply, reason):
    study, url = warm_study
    stand_in.reply, stand_in.delay = reply, 0
    proposer_for(settings(stand_in.url)).before_slot(study, "n2", 4)
    t = queued(study)
    assert t.user_attrs[PROPOSER]["status"] == FALLBACK
    assert re.search(reason, t.user_attrs[PROPOSER]["reason"])
    assert "fixed_params" not in t.system_attrs
    run_night(study, url, "n2", 1, toy)
    done = study.trials[t.number]
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert done.system_attrs[MOVE_KEY] in ("local", "global", "model")     # the default sampler chose it


def test_the_screen_hands_a_proposal_the_model_rates_low_to_the_sampler(warm_study, stand_in):
    """screen: the default sampler's own model (EI x P(feasible)) must rate the proposal at
    least that share of its own next pick. At 1.0 nothing but the sampler's own pick passes."""
    study, _ = warm_study
    far = {**GOOD, "LEARNING_RATE": 1e-6, "ITERS": 200, "DATA_MIX_RATIO": 0.9}
    stand_in.reply, stand_in.delay = json.dumps({"config": far, "hypothesis": "The lowest lr."}), 0
    proposer_for(settings(stand_in.url, screen=1.0)).before_slot(study, "n2", 4)
    r = queued(study).user_attrs[PROPOSER]
    assert r["status"] == FALLBACK and r["reason"].startswith("screened out: the study's model rates it"), r
    from study.sampler import rate
    mine, pick = rate(study, SPACE, "proxy", far)
    assert 0 <= mine < pick


def test_a_late_answer_falls_back(warm_study, stand_in):
    study, _ = warm_study
    stand_in.reply, stand_in.delay = json.dumps({"config": GOOD, "hypothesis": "x"}), 4.0
    t0 = time.monotonic()
    try:
        proposer_for(settings(stand_in.url, timeout_s=1.0)).before_slot(study, "n2", 4)
    finally:
        stand_in.delay = 0
    assert time.monotonic() - t0 < 3.5
    r = queued(study).user_attrs[PROPOSER]
    assert r["status"] == FALLBACK and r["reason"].startswith("no answer:") and "Timeout" in r["reason"]


def test_a_dead_server_falls_back(warm_study):
    study, _ = warm_study
    proposer_for(settings(f"http://127.0.0.1:{free_port()}/v1")).before_slot(study, "n2", 4)
    r = queued(study).user_attrs[PROPOSER]
    assert r["status"] == FALLBACK and r["reason"].startswith("no answer:") and "Connection" in r["reason"]


def test_the_token_budget_stops_asking(warm_study, stand_in):
    study, _ = warm_study
    n = len(stand_in.requests)
    proposer_for(settings(stand_in.url, max_tokens_per_night=500)).before_slot(study, "n2", 4)
    r = queued(study).user_attrs[PROPOSER]
    assert r["reason"].startswith("token budget: 0 of 500 used tonight") and len(stand_in.requests) == n


@pytest.mark.slow
def test_a_real_mlx_lm_server_answer_is_checked(warm_study, demo_assets, tmp_path):
    """The tiny demo model writes no valid proposal: its answer falls back, with why.
    (Without program.md's agenda: on 2 loaded CPU cores the demo model reads the whole
    ~2,500-token brief in over a minute.)"""
    study, _ = warm_study
    with mlx_server(demo_assets.model_dir, tmp_path / "server.log") as api:
        proposer_for(ProposerSettings(enabled=True, model="openai/default_model", api_base=api, share=1.0,
                                      max_tokens=32, timeout_s=240), program_md=None).before_slot(study, "n2", 4)
    r = queued(study).user_attrs[PROPOSER]
    assert r["status"] == FALLBACK and r.get("prompt_tokens", 0) > 500 and r["completion_tokens"] > 0, r
    assert r["reason"].split(":")[0] in ("no JSON object in the answer (a refusal?)", "malformed JSON",
                                         'the JSON has no "config" object', 'the JSON has no "hypothesis" sentence') \
        or "is outside" in r["reason"] or "parameter" in r["reason"], r


# -- a real night ------------------------------------------------------------------------

def _proposer_table(toml: str, api_base: str, key_env: str) -> str:
    table = "\n".join(["[proposer]", "enabled = true", 'model = "openai/stand-in"', f'api_base = "{api_base}"',
                       f'api_key_env = "{key_env}"', "share = 1.0", "timeout_s = 30", "screen = 0.0", ""])
    return re.sub(r"^\[proposer\]\n.*?(?=^\[)", table + "\n", toml, count=1, flags=re.S | re.M)


@pytest.mark.slow
def test_a_demo_night_runs_the_proposal_and_writes_no_key(tmp_path, demo_assets, stand_in):
    """Warm start = the baseline alone; then the proposer's config runs (trial 1). The key
    reaches the model's server and no file the night writes."""
    import os
    import subprocess
    import sys
    import uuid

    from night_fixtures import link_demo_cache, make_workdir
    wd = make_workdir(tmp_path / "night", pretrain_s=float(os.environ.get("AUTORESEARCH_TEST_PRETRAIN_S", "20")),
                      overrides={"budget_s = 240\n": "budget_s = 4\n", "iters_scale = 0.5": "iters_scale = 0.02"})
    link_demo_cache(wd, demo_assets)
    (wd / "program.md").write_text((ROOT / "program.md").read_text())
    space = (wd / "search_space.yaml").read_text()
    (wd / "search_space.yaml").write_text(space[:space.index("\nwarm_start:")] + "\nwarm_start: []\n")
    toml = wd / "autoresearch.toml"
    toml.write_text(_proposer_table(toml.read_text(), stand_in.url, "COUNCIL_TEST_PROPOSER_KEY"))
    key = f"sk-sentinel-{uuid.uuid4().hex}"
    hypothesis = "Fewer LoRA layers at lr 5e-5 keep the jailbreak floor."
    stand_in.reply, stand_in.delay = json.dumps({"config": GOOD, "hypothesis": hypothesis}), 0
    sent_before = len(stand_in.requests)
    out = subprocess.run([sys.executable, "-m", "study.nightly", "--config", str(toml), "--demo", "--no-progress",
                          "--max-trials", "2"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, COUNCIL_TEST_PROPOSER_KEY=key))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert key not in out.stdout + out.stderr
    sent = stand_in.requests[sent_before:]
    assert len(sent) == 1 and all(r["auth"] == f"Bearer {key}" for r in sent)   # the key went to the model only

    db = next(wd.rglob("autoresearch.db"))
    storage = f"sqlite:///{db}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    t0, t1 = study.trials
    assert PROPOSER not in t0.user_attrs and t0.params == SPACE.baseline("proxy")
    assert t1.user_attrs[PROPOSER]["status"] == PROPOSED and t1.params == GOOD
    assert t1.state == optuna.trial.TrialState.COMPLETE and t1.user_attrs[OUTCOME].startswith(t1.user_attrs["result"])
    from optuna_dashboard._note import get_note_from_system_attrs
    assert hypothesis in get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id),
                                                    t1._trial_id)["body"]
    vault = [p for p in wd.rglob("autoresearch-*.md") if t1.user_attrs["experiment_id"] in p.name]
    assert len(vault) == 1 and hypothesis in vault[0].read_text()
    report = next(wd.rglob("reports/*.md")).read_text()
    assert "## Proposals" in report and hypothesis in report

    written = []
    for folder, dirs, files in os.walk(wd):     # not into the linked demo model (written before tonight)
        written += [Path(folder) / f for f in files]
    assert len(written) > 20
    leaks = [p for p in written if key.encode() in p.read_bytes()]
    assert not leaks, leaks


def test_bad_proposer_settings_are_config_errors(tmp_path, monkeypatch):
    from common.errors import ConfigError
    from study.config import load_settings
    from study.proposer import make_proposer
    from night_fixtures import make_workdir
    wd = make_workdir(tmp_path / "wd")
    toml = wd / "autoresearch.toml"
    toml.write_text(_proposer_table(toml.read_text(), "http://127.0.0.1:9/v1", "NO_SUCH_PROPOSER_KEY")
                    .replace('model = "openai/stand-in"\n', ""))
    with pytest.raises(ConfigError, match="proposer: enabled = true needs a model"):
        load_settings(toml)
    toml.write_text(_proposer_table(toml.read_text(), "http://127.0.0.1:9/v1", "NO_SUCH_PROPOSER_KEY"))
    monkeypatch.delenv("NO_SUCH_PROPOSER_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"autoresearch.toml: proposer.api_key_env: environment variable "
                                          r"NO_SUCH_PROPOSER_KEY is not set"):
        make_proposer(load_settings(toml), SPACE, "proxy")
    toml.write_text(toml.read_text().replace("share = 1.0", "share = 1.5"))
    with pytest.raises(ConfigError, match="proposer.share"):
        load_settings(toml)
