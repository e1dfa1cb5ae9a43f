"""train_core: real mlx-lm LoRA runs on the tiny demo model (a few steps each)."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from common.atomic import sha256_dir
from common.errors import ConfigError
from train_core import (OutOfMemory, StopTraining, TrainCallback, TrainResult, TrainSpec,
                        base_model_sha256, is_allocation_error, train, train_in_subprocess)
from train_core import __main__ as cli
from train_core.adapter import publish, remove_stale_temp_dirs
from train_core.callbacks import is_diverged, over_budget
from train_core.data import has_loss_tokens, load_split, read_chat_jsonl
from train_core.oom import died_of_oom
from train_core.trainer import _model_sha256_fallback, clamp_layers, lr_schedule

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def model_dir(demo_assets) -> Path:
    return Path(demo_assets.model_dir)


@pytest.fixture(scope="module")
def depth(model_dir) -> int:
    return json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]


@pytest.fixture(scope="module")
def data_dir(demo_assets, tmp_path_factory) -> Path:
    """16 train / 4 valid examples drawn from the demo sessions (extra keys left in)."""
    rows = []
    for f in sorted(Path(demo_assets.sessions_dir).glob("*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    out = tmp_path_factory.mktemp("data")
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    (out / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[16:20]))
    return out


def make_spec(model_dir, data_dir, adapter_dir, **overrides) -> TrainSpec:
    base = dict(model=str(model_dir), data_dir=str(data_dir), adapter_dir=str(adapter_dir),
                num_layers=2, lora_rank=4, lora_alpha=8.0, dropout=0.0, learning_rate=1e-4,
                iters=2, grad_accum=1, batch_size=2, val_every=2, val_batches=1, budget_s=120.0,
                lr_schedule="constant", seed=0)
    base.update(overrides)
    return TrainSpec(**base)


class Recorder(TrainCallback):
    def __init__(self):
        self.events: list[tuple] = []

    def on_start(self, ctx):
        self.events.append(("start",))

    def on_train_loss(self, step, loss, ctx):
        self.events.append(("train", step))

    def on_val_loss(self, step, loss, ctx):
        self.events.append(("val", step, ctx.model.training))

    def on_end(self, result):
        self.events.append(("end", result.stopped_by))


@pytest.fixture(scope="module")
def short_run(model_dir, data_dir, tmp_path_factory):
    """Two steps with validation after each, alpha 24 / rank 4: one run many tests read."""
    adapter = tmp_path_factory.mktemp("runs") / "short"
    spec = make_spec(model_dir, data_dir, adapter, lora_alpha=24.0, val_every=1)
    rec = Recorder()
    return spec, train(spec, [rec], progress=True), rec


def siblings(adapter_dir: Path) -> list[str]:
    return sorted(p.name for p in adapter_dir.parent.iterdir() if p.name != adapter_dir.name)


# ---------------------------------------------------------------- real runs

@pytest.mark.slow
def test_short_run_writes_a_complete_adapter(short_run, model_dir):
    spec, result, rec = short_run
    adapter = Path(spec.adapter_dir)
    assert result.stopped_by == "iters" and result.iters_done == 2 and result.updates_done == 2
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    assert siblings(adapter) == []  # no temp or scratch folder left beside it
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora"
    assert config["lora_parameters"] == {"rank": 4, "scale": 6.0, "dropout": 0.0}
    assert config["num_layers"] == 2
    assert config["base_model"] == {"path": os.path.abspath(model_dir), "sha256": result.base_model_sha256}
    assert config["train"] == spec.to_dict()
    assert result.adapter_sha256 == sha256_dir(adapter, "*.safetensors")
    assert result.base_model_sha256 == base_model_sha256(model_dir)
    assert result.trainable_params > 0 and math.isfinite(result.val_loss) and math.isfinite(result.train_loss)
    assert [s for s, _ in result.val_history] == [0, 1, 2]
    # hooks: start, val at 0, then per step a train loss and a val (model in eval mode), end
    assert rec.events[0] == ("start",) and rec.events[-1] == ("end", "iters")
    assert ("val", 1, False) in rec.events and ("train", 2) in rec.events


@pytest.mark.slow
def test_num_layers_clamped_and_recorded(model_dir, data_dir, depth, tmp_path):
    """NUM_LAYERS 99 on the 48-layer model; stopped in on_start, so no step is paid for."""
    from mlx_lm import load

    class StopAtOnce(TrainCallback):
        def on_start(self, ctx):
            raise StopTraining("at once")

    spec = make_spec(model_dir, data_dir, tmp_path / "a", num_layers=99)
    result = train(spec, [StopAtOnce()], progress=False)
    assert (result.num_layers_requested, result.num_layers_effective) == (99, depth)
    assert (result.stopped_by, result.iters_done, result.val_history) == ("callback:at once", 0, [])
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["num_layers"] == depth
    load(str(model_dir), adapter_path=str(tmp_path / "a"))  # LoRA on every block, shapes match
    assert clamp_layers(99, 48) == 48 and clamp_layers(16, 48) == 16


@pytest.mark.slow
def test_adapter_loads_in_mlx_lm_with_its_trained_weights(short_run, model_dir):
    from mlx.utils import tree_flatten
    from mlx_lm import load

    spec, _, _ = short_run
    model, _ = load(str(model_dir), adapter_path=spec.adapter_dir)
    saved = mx.load(str(Path(spec.adapter_dir) / "adapters.safetensors"))
    params = dict(tree_flatten(model.parameters()))
    assert saved and all(mx.array_equal(params[k], v).item() for k, v in saved.items())
    assert any(mx.abs(v).max().item() > 0 for k, v in saved.items() if k.endswith("lora_b"))


@pytest.mark.slow
def test_adapter_runs_in_mlx_lm_generate_cli(short_run, model_dir):
    spec, _, _ = short_run
    out = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(model_dir),
                          "--adapter-path", spec.adapter_dir, "--prompt", "hi", "--max-tokens", "3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Generation:" in out.stdout


@pytest.mark.slow
def test_budget_stop_still_saves_a_complete_adapter(model_dir, data_dir, tmp_path):
    spec = make_spec(model_dir, data_dir, tmp_path / "a", iters=100_000, budget_s=2.0, val_every=1000)
    result = train(spec, progress=False)
    assert result.stopped_by == "budget"
    assert 0 < result.iters_done < 100_000
    assert result.elapsed_s < spec.budget_s + 3.0, "overshoot should be about one step"
    weights = mx.load(str(tmp_path / "a" / "adapters.safetensors"))
    assert len(weights) == 2 * 2 * 7  # lora_a + lora_b on 7 linears in each of 2 blocks
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["num_layers"] == 2


@pytest.mark.slow
def test_val_steps_do_not_depend_on_iters_and_grad_accum_sets_updates(model_dir, data_dir, tmp_path):
    short = train(make_spec(model_dir, data_dir, tmp_path / "s", iters=2, grad_accum=1), progress=False)
    long = train(make_spec(model_dir, data_dir, tmp_path / "l", iters=3, grad_accum=2), progress=False)
    # mlx-lm's own validation would add one at the last iteration (3): ours must not
    assert [s for s, _ in short.val_history] == [s for s, _ in long.val_history] == [0, 2]
    assert short.val_history[0] == long.val_history[0]  # same base, same fixed batches
    assert (short.iters_done, long.iters_done) == (2, 3)
    assert (short.updates_done, long.updates_done) == (2, 1)


@pytest.mark.slow
def test_callback_stop_keeps_the_adapter(model_dir, data_dir, tmp_path):
    class Pruner(TrainCallback):
        def on_train_loss(self, step, loss, ctx):
            if step == 1:
                raise StopTraining("pruned")

    rec = Recorder()
    result = train(make_spec(model_dir, data_dir, tmp_path / "a", iters=50), [Pruner(), rec], progress=False)
    assert result.stopped_by == "callback:pruned" and result.iters_done == 1
    assert (tmp_path / "a" / "adapters.safetensors").is_file()
    assert rec.events[-1] == ("end", "callback:pruned")


@pytest.mark.slow
def test_exploding_learning_rate_stops_with_nan(model_dir, data_dir, tmp_path):
    result = train(make_spec(model_dir, data_dir, tmp_path / "a", iters=20, learning_rate=1e20),
                   progress=False)
    assert result.stopped_by in ("nan", "diverged")
    assert result.iters_done < 20
    assert json.loads(json.dumps(result.to_dict()))["val_loss"] is None  # NaN -> null


@pytest.mark.slow
def test_cli_writes_result_and_maps_config_errors(model_dir, data_dir, tmp_path, capsys):
    good = tmp_path / "spec.json"
    make_spec(model_dir, data_dir, tmp_path / "a", iters=1, val_every=1).to_json(good)
    assert cli.main(["--spec", str(good), "--result", str(tmp_path / "r.json"), "--quiet"]) == 0
    result = TrainResult.from_dict(json.loads((tmp_path / "r.json").read_text()))
    assert result.stopped_by == "iters" and result.iters_done == 1

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(good.read_text()), "lora_rnak": 8}))
    capsys.readouterr()
    assert cli.main(["--spec", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "lora_rnak" in err


@pytest.mark.slow
def test_allocation_failure_in_process_becomes_out_of_memory(model_dir, data_dir, tmp_path):
    """The in-process path (Metal/CUDA raise): a real MemoryError mid-run -> OutOfMemory.

    MLX on Linux CPU cannot raise one (see the child-process test), so the allocation
    that fails here is Python's own, made from a hook after the first step.
    """
    class Hog(TrainCallback):
        def on_train_loss(self, step, loss, ctx):
            bytearray(1 << 62)

    with pytest.raises(OutOfMemory) as info:
        train(make_spec(model_dir, data_dir, tmp_path / "a", iters=5), [Hog()], progress=False)
    partial = info.value.result
    assert (partial.stopped_by, partial.iters_done, partial.adapter_sha256) == ("oom", 1, "")
    assert [s for s, _ in partial.val_history] == [0]
    assert not (tmp_path / "a").exists() and siblings(tmp_path / "a") == []


@pytest.mark.slow
def test_oom_in_a_child_process_is_recorded(model_dir, tmp_path, monkeypatch):
    """A real MLX OOM on Linux CPU: malloc fails under RLIMIT_AS and MLX segfaults.

    MLX 0.32's CPU allocator never raises (it does not check malloc), so the OOM can
    only be observed from outside the process: train_in_subprocess maps the death.
    A batch of 64 x 1280 tokens needs ~1.7 GB for one layer's attention scores alone.
    """
    data = tmp_path / "long"
    data.mkdir()
    answer = " ".join(["the council guards the secret answer"] * 300)
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]}
    for name in ("train", "valid"):
        (data / f"{name}.jsonl").write_text((json.dumps(row) + "\n") * 64)
    spec = make_spec(model_dir, data, tmp_path / "a", num_layers=1, batch_size=64, max_seq_length=1280)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # glibc's per-thread arenas would vary VmSize by core count
    with pytest.raises(OutOfMemory) as info:
        train_in_subprocess(spec, address_space_limit=2 << 30, timeout_s=180)
    assert info.value.result.stopped_by == "oom"
    assert not (tmp_path / "a").exists() and siblings(tmp_path / "a") == ["long"]


# ---------------------------------------------------------------- no training

def test_spec_json_errors_name_file_and_key(tmp_path):
    good = {"model": "m", "data_dir": "d", "adapter_dir": "a"}
    cases = {
        "unknown key": ({**good, "lora_rnak": 8}, "lora_rnak"),
        "wrong type": ({**good, "iters": "800"}, "iters"),
        "bool for int": ({**good, "grad_accum": True}, "grad_accum"),
        "missing": ({"model": "m", "data_dir": "d"}, "adapter_dir"),
        "bad choice": ({**good, "lr_schedule": "linear"}, "lr_schedule"),
        "out of range": ({**good, "dropout": 1.5}, "dropout"),
    }
    for name, (data, key) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError) as info:
            TrainSpec.from_json(path)
        assert (info.value.file, info.value.key) == (str(path), key), name
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        TrainSpec.from_json(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="file not found"):
        TrainSpec.from_json(tmp_path / "absent.json")


def test_spec_round_trips_and_scale_is_alpha_over_rank(tmp_path):
    spec = TrainSpec(model="m", data_dir="d", adapter_dir="a", lora_rank=8, lora_alpha=64)
    spec.to_json(tmp_path / "s.json")
    again = TrainSpec.from_json(tmp_path / "s.json")
    assert again == spec and again.lora_scale == 8.0 and isinstance(again.lora_alpha, float)
    assert spec.total_updates == 800 // 4


@pytest.mark.slow
def test_missing_model_or_data_is_a_config_error(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="not a model folder"):
        train(TrainSpec(model=str(tmp_path / "nope"), data_dir=str(tmp_path), adapter_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="train.jsonl"):
        train(TrainSpec(model=str(model_dir), data_dir=str(tmp_path), adapter_dir=str(tmp_path / "a")),
              progress=False)
    assert not (tmp_path / "a").exists()


def test_bad_jsonl_row_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "x"}]}\n{"text": "no messages"}\n')
    with pytest.raises(ConfigError) as info:
        read_chat_jsonl(path)
    assert info.value.key == "line 2"


@pytest.mark.slow
def test_examples_are_cut_to_max_seq_length_and_answerless_ones_dropped(model_dir, data_dir):
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(model_dir)
    full = load_split(data_dir, "train", tok, mask_prompt=True, max_seq_length=4096)
    lengths = sorted(len(full[i][0]) for i in range(len(full)))
    offsets = sorted(full[i][1] for i in range(len(full)))
    cut = offsets[-1]  # the latest-starting answer lies past the cut; the others are cut short
    assert offsets[0] < cut < lengths[-1]
    short = load_split(data_dir, "train", tok, mask_prompt=True, max_seq_length=cut)
    assert all(len(short[i][0]) <= cut and short[i][1] < len(short[i][0]) for i in range(len(short)))
    assert short.dropped == sum(1 for o in offsets if o >= cut) >= 1
    assert len(short) == len(full) - short.dropped and short.truncated >= short.dropped
    assert short.itemlen(0) == len(short[0][0])


def test_lr_schedule_counts_optimizer_updates():
    sched = lr_schedule("cosine", 1e-3, total_updates=100)  # warmup 5 updates
    values = [sched(mx.array(i)).item() for i in (0, 4, 5, 50, 99)]
    assert values[0] < values[1] < values[2] == pytest.approx(1e-3)
    assert values[3] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 45 / 95)), rel=1e-4)
    assert values[4] < 1e-5
    assert lr_schedule("constant", 1e-3, 100) == 1e-3
    assert lr_schedule("cosine", 1e-3, 1)(mx.array(0)).item() == pytest.approx(1e-3)


def test_small_pure_rules():
    assert over_budget(9.5, 1.0, 10.0) and not over_budget(8.0, 1.0, 10.0)
    assert has_loss_tokens(100, 30, 64) and not has_loss_tokens(100, 70, 64)
    assert died_of_oom(-9) and died_of_oom(-11) and not died_of_oom(1) and not died_of_oom(-15)
    assert died_of_oom(139, via_shell=True) and not died_of_oom(139) and not died_of_oom(3, via_shell=True)
    assert is_diverged(4.1, 1.0, 4.0) and not is_diverged(3.9, 1.0, 4.0)
    assert not is_diverged(math.nan, 1.0, 4.0)  # NaN is NanGuard's, not divergence


def test_real_mlx_allocation_messages_are_recognised():
    # Verbatim from MLX (metal/cuda allocators, allocator.cpp) and a Metal command buffer.
    real = [
        "[metal::malloc] Attempting to allocate 48736917632 bytes which is greater than the "
        "maximum allowed buffer size of 30150672384 bytes.",
        "[metal::malloc] Unable to allocate 124367104 bytes.",
        "[malloc_or_wait] Unable to allocate 124367104 bytes.",
        "[METAL] Command buffer execution failed: Insufficient Memory "
        "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
        "std::bad_alloc",
    ]
    assert all(is_allocation_error(RuntimeError(m)) for m in real)
    assert is_allocation_error(MemoryError())
    assert not is_allocation_error(RuntimeError("[matmul] Last dimension of first input ..."))
    assert not is_allocation_error(ValueError("Unable to allocate"))


def test_publish_replaces_an_existing_adapter_and_stale_temps_go(tmp_path):
    dest, new = tmp_path / "adapter", tmp_path / "new"
    dest.mkdir(), new.mkdir()
    (dest / "old.txt").write_text("old")
    (new / "new.txt").write_text("new")
    publish(new, dest)
    assert [p.name for p in dest.iterdir()] == ["new.txt"] and siblings(dest) == []
    stale = [tmp_path / ".adapter.tmp-999999999-x", tmp_path / ".adapter.old-999999999-y"]  # dead pid
    live = tmp_path / f".adapter.tmp-{os.getpid()}-z"
    for p in stale + [live]:
        p.mkdir()
    assert remove_stale_temp_dirs(dest) == stale and live.exists()


@pytest.mark.slow
def test_base_model_sha_agrees_with_the_eval(model_dir):
    evaluation = pytest.importorskip("evaluation.results")
    assert base_model_sha256(model_dir) == evaluation.model_sha256(model_dir)
    assert _model_sha256_fallback(model_dir) == evaluation.model_sha256(model_dir)


@pytest.mark.slow
def test_import_does_not_pull_optuna():
    code = "import sys, train_core; assert 'optuna' not in sys.modules, 'optuna imported'"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_budget_guard_keeps_room_for_the_final_validation():
    """The final validation scores the whole split (here 4x the in-loop subset): the guard
    stops the loop early enough for it, and never stops after the last step, where it
    would save nothing."""
    import time as _time

    from train_core.callbacks import BudgetGuard, TrainContext

    def ctx(ratio: float, elapsed: float) -> TrainContext:
        spec = TrainSpec(model="m", data_dir="d", adapter_dir="a", iters=100, val_every=1000, budget_s=10.0)
        c = TrainContext(spec=spec, model=None, tokenizer=None, num_layers_effective=1, trainable_params=1,
                         started_at=_time.monotonic() - elapsed, last_step_s=1.0, last_val_s=1.0,
                         final_val_ratio=ratio)
        return c

    guard = BudgetGuard(10.0)
    guard.on_train_loss(50, 1.0, ctx(0.0, 5.5))            # no final validation to reserve: 6.5 s < 10
    with pytest.raises(StopTraining, match="budget"):
        guard.on_train_loss(50, 1.0, ctx(4.0, 5.5))        # 5.5 + 1 step + 4 s final validation > 10
    assert ctx(4.0, 0.0).final_val_s == 4.0
    guard.on_train_loss(100, 1.0, ctx(4.0, 9.9))           # the last step: nothing left to stop


def test_a_split_is_tokenised_once_per_variant_and_tokenizer(model_dir, data_dir, tmp_path):
    """The second trial on the same data variant reads the token ids back (no tokenizer
    needed at all); changed bytes or another tokenizer tokenise again; a damaged cache
    file is tokenised over, not trusted."""
    import shutil

    from mlx_lm.utils import load_tokenizer

    from train_core.data import TOKEN_CACHE, tokenizer_fingerprint

    data = tmp_path / "variant"
    data.mkdir()
    for split in ("train", "valid"):   # the splits only: other tests' training cached theirs
        shutil.copy(data_dir / f"{split}.jsonl", data)
    tok, tid = load_tokenizer(model_dir), tokenizer_fingerprint(model_dir)
    plain = load_split(data, "train", tok, mask_prompt=True, max_seq_length=4096)
    first = load_split(data, "train", tok, mask_prompt=True, max_seq_length=4096, tokenizer_id=tid)
    [cache] = (data / TOKEN_CACHE).iterdir()
    again = load_split(data, "train", None, mask_prompt=True, max_seq_length=64, tokenizer_id=tid)
    assert [first[i] for i in range(len(first))] == [plain[i] for i in range(len(plain))]
    assert [again[i][0] for i in range(len(again))] == [first[i][0][:64] for i in range(len(first))
                                                        if first[i][1] < min(len(first[i][0]), 64)]
    with pytest.raises(AttributeError):   # another tokenizer: a miss, so it must tokenise
        load_split(data, "train", None, mask_prompt=True, max_seq_length=4096, tokenizer_id="other")
    with (data / "train.jsonl").open("a") as fh:
        fh.write((data / "valid.jsonl").read_text().splitlines()[0] + "\n")
    grown = load_split(data, "train", tok, mask_prompt=True, max_seq_length=4096, tokenizer_id=tid)
    assert len(grown) == len(first) + 1 and len(list((data / TOKEN_CACHE).iterdir())) == 2
    cache.write_bytes(b"not an npz")
    (data / "train.jsonl").write_text("".join((data_dir / "train.jsonl").read_text()))
    healed = load_split(data, "train", tok, mask_prompt=True, max_seq_length=4096, tokenizer_id=tid)
    assert [healed[i] for i in range(len(healed))] == [first[i] for i in range(len(first))]
