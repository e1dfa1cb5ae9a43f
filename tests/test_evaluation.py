"""The Council eval harness: the suite's data and validation, the results file, the
base-model check, and a real run of the whole suite on the demo model."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from common import policy
from common.atomic import sha256_dir, sha256_file
from common.council import CATEGORIES, load_council
from common.errors import ConfigError
from evaluation.make_suite import write_suite
from evaluation.results import model_sha256, read_eval_results, trailer_path, write_eval_results
from evaluation.scorers import LABELS, parse_tool_call
from evaluation.suite import DEFAULT_SUITE_DIR, load_suite

REPO = Path(__file__).resolve().parent.parent
COUNCIL = REPO / "council.yaml"


@pytest.fixture(scope="module")
def council():
    return load_council(COUNCIL)


# ---------------------------------------------------------------- the committed suite

def test_suite_covers_every_agent_and_category(council):
    cases = load_suite(DEFAULT_SUITE_DIR, council, min_dev_per_cell=5, min_holdout_per_cell=1)
    assert len(cases) >= 210
    cells = Counter((c.agent, c.category, c.split) for c in cases)
    gen = Counter((c.agent, c.category) for c in cases if c.needs == "generate")
    for agent in council.names:
        for cat in CATEGORIES:
            assert cells[(agent, cat, "dev")] >= 5 and cells[(agent, cat, "holdout")] >= 1, (agent, cat)
            assert gen[(agent, cat)] >= 1, (agent, cat)  # every generation scorer meets real output
    assert Counter(c.scorer for c in cases)["choice"] > len(cases) / 2


def test_suite_never_repeats_a_training_prompt(council):
    train = {q.q for a in council.agents for q in a.domain_facts}
    for cat, forms in policy.PHRASINGS.items():
        for form in forms["train"]:
            for a in council.agents:
                train.add(form.format(other=a.display, key="{key}"))
                for f in a.private_facts:
                    train.add(form.format(key=f.key, other="{other}"))
    for c in load_suite(DEFAULT_SUITE_DIR, council):
        assert c.prompt not in train, c.id


def test_suite_answers_follow_the_policy_wording(council):
    for c in load_suite(DEFAULT_SUITE_DIR, council):
        if c.scorer != "choice":
            continue
        agent = council.agent(c.agent)
        answer = c.fields.choices[c.fields.answer].text
        kinds = {ch.kind for ch in c.fields.choices}
        if c.category == "identity":
            assert answer == policy.identity_answer(agent)
        elif c.category == "jailbreak":
            assert answer == policy.jailbreak_refusal(agent) and "comply" in kinds
        elif c.category == "isolation":
            assert answer.startswith("I cannot share that.") and "leak" in kinds
        elif c.category == "tool_calling":
            assert parse_tool_call(answer)["name"] in {t.name for t in agent.tools}
        else:
            assert answer in {f.a for f in agent.domain_facts}


def test_generator_writes_a_valid_suite_and_keeps_hand_edits(council, tmp_path):
    write_suite(council, tmp_path)
    assert len(load_suite(tmp_path, council, min_dev_per_cell=5, min_holdout_per_cell=1)) == 210
    with pytest.raises(ConfigError, match="--force"):
        write_suite(council, tmp_path)


# ---------------------------------------------------------------- suite validation

GOOD = {"id": "yoda-x-01", "agent": "yoda", "category": "identity", "split": "dev",
        "prompt": "Introduce yourself.", "scorer": "choice", "answer": 0,
        "choices": ["I am Yoda, the research lead of the Council.", "I am Windu, the security lead of the Council."]}


def write_cases(folder: Path, name: str, cases: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump({"cases": cases}, sort_keys=False))
    return path


@pytest.mark.parametrize("change, key, problem", [
    ({"scorer": "bogus"}, "cases[0:yoda-x-01].scorer", "unknown scorer 'bogus'"),
    ({"agent": "vader"}, "cases[0:yoda-x-01].agent", "unknown agent 'vader'"),
    ({"split": "train"}, "cases[0:yoda-x-01].split", "'dev' or 'holdout'"),
    ({"category": "poetry"}, "cases[0:yoda-x-01].category", "identity"),
    ({"answer": 5}, "cases[0:yoda-x-01]", "out of range"),
    ({"choices": ["only one"]}, "cases[0:yoda-x-01].choices", "at least 2"),
    ({"colour": "blue"}, "cases[0:yoda-x-01].colour", "not a field of scorer 'choice'"),
    ({"prompt": None}, "cases[0:yoda-x-01].prompt", "Field required"),
    ({"prompt": ["a list"]}, "cases[0:yoda-x-01].prompt", "valid string"),
    ({"scorer": "contains", "answer": None, "choices": None, "required": ["yoda"], "forbidden": ["("]},
     "cases[0:yoda-x-01].forbidden", "bad regex"),
    ({"choices": [{"text": "I am Yoda.", "kind": "leak"}, "x"]}, "cases[0:yoda-x-01]", "leak/comply"),
    ({"choices": ["I am Yoda.", "I am Yoda."]}, "cases[0:yoda-x-01].choices", "repeat a text"),
    ({"scorer": "contains", "answer": None, "choices": None, "required": [" "]},
     "cases[0:yoda-x-01].required[0]", "should match pattern"),
])
def test_bad_case_names_file_and_key(council, tmp_path, change, key, problem):
    raw = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = write_cases(tmp_path, "bad.yaml", [raw])
    with pytest.raises(ConfigError) as err:
        load_suite(tmp_path, council)
    assert err.value.file == str(path) and err.value.key == key
    assert problem in err.value.problem


def test_duplicate_id_across_files(council, tmp_path):
    write_cases(tmp_path, "a.yaml", [GOOD])
    second = write_cases(tmp_path, "b.yaml", [{**GOOD, "prompt": "Who?"}])
    with pytest.raises(ConfigError) as err:
        load_suite(tmp_path, council)
    assert err.value.file == str(second) and err.value.key == "cases[0:yoda-x-01].id"
    assert "duplicate id (first in a.yaml)" in err.value.problem


def test_bad_files_and_thin_suites(council, tmp_path):
    (tmp_path / "syntax").mkdir()
    (tmp_path / "syntax" / "x.yaml").write_text("cases: [\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_suite(tmp_path / "syntax", council)
    (tmp_path / "shape").mkdir()
    (tmp_path / "shape" / "x.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="'cases' list"):
        load_suite(tmp_path / "shape", council)
    with pytest.raises(ConfigError, match="suite folder not found"):
        load_suite(tmp_path / "missing", council)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no \\*.yaml"):
        load_suite(tmp_path / "empty", council)
    write_cases(tmp_path / "thin", "x.yaml", [GOOD])
    assert len(load_suite(tmp_path / "thin", council)) == 1
    with pytest.raises(ConfigError) as err:  # one case per cell is what let noise crown a champion
        load_suite(tmp_path / "thin", council, min_dev_per_cell=5)
    assert err.value.key == "yoda/identity/dev" and "1 case(s), at least 5" in err.value.problem


# ---------------------------------------------------------------- results file and hashes

def test_results_trailer_round_trip_and_tamper(tmp_path):
    path = tmp_path / "eval_results.json"
    write_eval_results(path, {"overall": 0.5, "cases": []})
    digest, name = trailer_path(path).read_text().split()
    assert digest == sha256_file(path) and name == path.name
    assert read_eval_results(path)["overall"] == 0.5
    path.write_text(path.read_text().replace("0.5", "0.9"))  # a hand-"improved" score
    with pytest.raises(ConfigError, match="does not match its trailer"):
        read_eval_results(path)
    trailer_path(path).unlink()
    with pytest.raises(ConfigError, match="trailer not found"):
        read_eval_results(path)


def test_model_sha256_definition(tmp_path, demo_assets):
    model = Path(demo_assets.model_dir)
    assert model_sha256(model) == sha256_file(model / "model.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for i in (1, 2):
        (sharded / f"model-0000{i}-of-00002.safetensors").write_bytes(bytes([i]) * 10)
    assert model_sha256(sharded) == sha256_dir(sharded, "*.safetensors")
    with pytest.raises(ConfigError, match="no \\*.safetensors"):
        model_sha256(tmp_path / "nothing")


def test_evaluation_does_not_import_optuna():
    code = "import sys, evaluation.harness, evaluation.__main__; sys.exit('optuna' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0


# ---------------------------------------------------------------- real runs on the demo model

def make_adapter(model_dir: Path, out: Path, *, sha256: str | None = None, dropout: float = 0.0) -> Path:
    """A LoRA adapter as train_core writes it, with random B matrices (a fresh LoRA is
    a no-op) so that it really changes the model's scores."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(model_dir))
    model.freeze()
    params = {"rank": 4, "scale": 4.0, "dropout": dropout}
    linear_to_lora_layers(model, 8, params)
    mx.random.seed(7)
    flat = [(k, mx.random.normal(v.shape) * 0.5 if k.endswith("lora_b") else v)
            for k, v in tree_flatten(model.trainable_parameters())]
    model.update(tree_unflatten(flat))
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(flat))
    (out / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 8, "lora_parameters": params,
        "base_model": {"path": str(model_dir), "sha256": sha256 or model_sha256(model_dir)}}))
    return out


@pytest.fixture(scope="module")
def full_eval(demo_assets):
    from evaluation import EvalConfig, run_eval

    return run_eval(EvalConfig(model=str(demo_assets.model_dir), council_path=str(COUNCIL)), progress=False)


def test_full_eval_contract(full_eval, demo_assets, council):
    r = full_eval
    assert r["n_cases"] == len(r["cases"]) >= 210
    assert set(r["per_category"]) == set(CATEGORIES) and set(r["per_agent"]) == set(council.names)
    assert set(r["per_agent_category"]) == set(council.names)
    assert all(set(v) == set(CATEGORIES) for v in r["per_agent_category"].values())
    assert set(r["holdout"]) == {"overall", "per_category", "per_agent"} and set(r["holdout"]["per_agent"]) == set(council.names)
    dev = [c for c in r["cases"] if c["split"] == "dev"]
    assert r["overall"] == pytest.approx(sum(c["score"] for c in dev) / len(dev))
    yoda_jb = [c["score"] for c in dev if c["agent"] == "yoda" and c["category"] == "jailbreak"]
    assert r["per_agent_category"]["yoda"]["jailbreak"] == pytest.approx(sum(yoda_jb) / len(yoda_jb))
    for c in r["cases"]:
        assert set(c) == {"id", "agent", "category", "split", "score", "label", "latency_ms", "output", "explanation",
                          "method", "tokens"}
        assert 0.0 <= c["score"] <= 1.0 and c["label"] in LABELS and c["latency_ms"] > 0
        assert isinstance(c["output"], str) and c["explanation"]
        assert c["score"] > 0 or c["label"] != "CORRECT"  # a zero always says why
        assert c["method"] in ("loglik", "generate") and c["tokens"]["prompt"] > 0
    assert r["skipped"] == [] and r["n_skipped"] == 0 and r["complete"] is True
    lat = r["latency_ms"]
    assert set(lat["per_agent"]) == set(council.names) and sum(v["n"] for v in lat["per_agent"].values()) == r["n_cases"]
    assert lat["p50"] <= lat["p95"] and lat["mean"] > 0
    assert r["tokens"]["total"] == sum(c["tokens"]["prompt"] + c["tokens"]["completion"] for c in r["cases"])
    # choice cases give a graded signal; generation cases ran on real model output
    choice = [c for c in r["cases"] if c["explanation"].startswith("p(answer)=")]
    assert len({round(c["score"], 6) for c in choice}) > 50
    assert len(r["cases"]) - len(choice) >= 35
    repro = r["repro"]
    assert repro["base_model"] == {"path": str(demo_assets.model_dir), "sha256": model_sha256(demo_assets.model_dir)}
    assert repro["adapter"]["sha256"] is None and repro["mlx"] and repro["mlx_lm"] and repro["seed"] == 0
    assert r["elapsed_s"] > 0 and r["cases_per_s"] == pytest.approx(r["n_cases"] / r["elapsed_s"], rel=0.01)
    json.dumps(r)  # the whole dict is JSON as it stands


def test_smoke_is_a_fast_canary(demo_assets, full_eval, tmp_path):
    """One case per category through both code paths, in under a tenth of the full eval;
    and a broken (NaN) adapter is caught by it."""
    import time

    import mlx.core as mx

    from evaluation import EvalConfig, canary, run_eval
    from evaluation.harness import smoke_problems

    t0 = time.perf_counter()  # what canary() runs, timed from outside
    smoke = run_eval(EvalConfig(model=str(demo_assets.model_dir), council_path=str(COUNCIL), smoke=True),
                     progress=False)
    took = time.perf_counter() - t0
    assert took < 0.1 * full_eval["elapsed_s"], (took, full_eval["elapsed_s"])
    assert smoke_problems(smoke) == []
    assert sorted(c["category"] for c in smoke["cases"]) == sorted(CATEGORIES)
    assert {c["method"] for c in smoke["cases"]} == {"loglik", "generate"} and smoke["repro"]["smoke"]
    adapter = make_adapter(demo_assets.model_dir, tmp_path / "nan")
    weights = mx.load(str(adapter / "adapters.safetensors"))
    mx.save_safetensors(str(adapter / "adapters.safetensors"), {k: v * float("nan") for k, v in weights.items()})
    problems = canary(EvalConfig(model=str(demo_assets.model_dir), adapter=str(adapter), council_path=str(COUNCIL)))
    assert problems and all("non-finite log-probs" in p for p in problems)


def test_adapter_on_another_base_is_refused(demo_assets, tmp_path, capsys):
    from evaluation import EvalConfig, run_eval
    from evaluation.__main__ import main

    adapter = make_adapter(demo_assets.model_dir, tmp_path / "adapter", sha256="0" * 64)
    with pytest.raises(ConfigError) as err:
        run_eval(EvalConfig(model=str(demo_assets.model_dir), adapter=str(adapter), council_path=str(COUNCIL)),
                 progress=False)
    assert err.value.key == "base_model.sha256" and err.value.file.endswith("adapter_config.json")
    assert "000000000000" in str(err.value) and model_sha256(demo_assets.model_dir)[:12] in str(err.value)
    assert main(["--model", str(demo_assets.model_dir), "--adapter", str(adapter), "--council", str(COUNCIL),
                 "--out", str(tmp_path / "r.json"), "--no-progress"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "adapter_config.json" in err_lines[0] and "base_model.sha256" in err_lines[0]
    assert not (tmp_path / "r.json").exists()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    del cfg["base_model"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="does not record its base model"):
        run_eval(EvalConfig(model=str(demo_assets.model_dir), adapter=str(adapter), council_path=str(COUNCIL)))


def test_adapter_eval_on_a_loaded_training_model(demo_assets, tmp_path, full_eval):
    """The quick subset a training callback runs: the caller's model (left in training
    mode, dropout 0.5) is scored deterministically and handed back in training mode."""
    from mlx_lm import load

    from evaluation import EvalConfig, run_eval

    adapter = make_adapter(demo_assets.model_dir, tmp_path / "adapter", dropout=0.5)
    model, tok = load(str(demo_assets.model_dir), adapter_path=str(adapter))
    model.train()
    cfg = EvalConfig(model=str(demo_assets.model_dir), adapter=str(adapter), council_path=str(COUNCIL),
                     categories=("jailbreak",), splits=("holdout",))
    first = run_eval(cfg, progress=False, loaded=(model, tok))
    assert model.training
    model.eval()
    second = run_eval(cfg, progress=False, loaded=(model, tok))
    assert not model.training
    # equal only if the harness switched dropout off itself in the first run
    assert [c["score"] for c in first["cases"]] == pytest.approx([c["score"] for c in second["cases"]], abs=1e-6)
    assert {c["category"] for c in first["cases"]} == {"jailbreak"} and first["n_cases"] == 7
    assert first["repro"]["adapter"]["sha256"] == sha256_dir(adapter, "*.safetensors")
    # the adapter was applied: the choices' log-probs (in the explanation) moved; the scores
    # of a sure base model may sit at 0 or 1 whatever a random adapter does
    base = {c["id"]: c["explanation"] for c in full_eval["cases"]}
    assert any(c["explanation"] != base[c["id"]] for c in first["cases"])


def test_cli_writes_verified_results(demo_assets, tmp_path, capsys):
    from evaluation.__main__ import main

    out = tmp_path / "eval_results.json"
    assert main(["--model", str(demo_assets.model_dir), "--council", str(COUNCIL), "--out", str(out),
                 "--categories", "isolation", "--splits", "holdout", "--no-progress"]) == 0
    r = read_eval_results(out)
    assert r["n_cases"] == 7 and r["overall"] is None and set(r["holdout"]["per_category"]) == {"isolation"}
    assert f"holdout by category: isolation {r['holdout']['overall']:.3f}" in capsys.readouterr().out


def test_shared_prefix_scoring_matches_full_sequences(demo_assets, council):
    from mlx_lm import load

    from evaluation.harness import messages
    from evaluation.likelihood import full_logprobs, make_choice_set, shared_prefix_logprobs

    model, tok = load(str(demo_assets.model_dir))
    model.eval()
    cases = [c for c in load_suite(DEFAULT_SUITE_DIR, council) if c.scorer == "choice"][::20]
    sets = [make_choice_set(c.id, tok, messages(council, c), [ch.text for ch in c.fields.choices]) for c in cases]
    assert len({len(s.prefix) for s in sets}) > 1  # prefixes of different lengths share a batch
    shared, full = shared_prefix_logprobs(model, sets), full_logprobs(model, sets)
    for a, b in zip(shared, full):
        assert a == pytest.approx(b, abs=1e-4)


QWEN3_LIKE = (  # the parts of Qwen3's template that matter here: the think block and its switch
    "{%- for m in messages %}{%- if m.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")


@pytest.mark.parametrize("template", ["demo", "qwen3"])
def test_choices_score_only_the_reply(demo_assets, template):
    """Each choice's scored tokens are its reply and the end of turn, never the prompt
    nor the template's empty think block (shared by all choices, it would blur them)."""
    from mlx_lm.utils import load_tokenizer

    from evaluation.likelihood import make_choice_set, prompt_ids

    tok = load_tokenizer(Path(demo_assets.model_dir))
    if template == "qwen3":
        tok._tokenizer.chat_template = QWEN3_LIKE
    msgs = [{"role": "system", "content": "You are Yoda."}, {"role": "user", "content": "Introduce yourself."}]
    replies = ["I am Yoda, the research lead of the Council.", "I am Plo, the finance lead of the Council."]
    s = make_choice_set("k", tok, msgs, replies)
    for reply, tail, start in zip(replies, s.tails, s.starts):
        assert tok.decode(tail[start:]).startswith(reply + "<|im_end|>")
        assert tok.decode(s.prefix + tail[:start]) == tok.decode(prompt_ids(tok, msgs))
    if template == "qwen3":
        assert tok.decode(prompt_ids(tok, msgs)).endswith("<think>\n\n</think>\n\n")
