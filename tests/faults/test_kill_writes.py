"""kill -9 while results.tsv or a vault entry is being written: the file is always exactly the
old version or exactly the new one, never half.

A forked child rewrites the file in a loop, alternating two large versions through the real
writers (study.results.export_results, study.vault.Vault.write); the test SIGKILLs it at a
random instant, compares the file byte for byte with both versions, and starts the next
child: 30 kills per file. A temp file left beside the target proves a kill landed mid-write.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import optuna
import pandas as pd
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from common.atomic import sweep_temp_files
from study.results import HEADER, export_results
from study.vault import Vault, VaultEntry, read_front_matter, render

KILLS = 30
optuna.logging.set_verbosity(optuna.logging.WARNING)


def big_study(n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name=f"council-proxy-demo-{n}")
    dist = {"LEARNING_RATE": FloatDistribution(1e-6, 1e-4, log=True)}
    for i in range(n):
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=i / n, params={"LEARNING_RATE": 1e-6 + i * 1e-9}, distributions=dist,
            # Long cells, few rows: little to render, much to write, so most kills hit the write.
            user_attrs={"experiment_id": f"exp-{i:05d}", "timestamp": f"2026-11-{1 + i % 28:02d}T02:00:00",
                        "mode": "proxy", "model": f"demo-{i}-" + "m" * 8000, "score": i / n, "baseline": 0.3,
                        "result": "kept" if i % 7 == 0 else "reverted", "elapsed_s": 61.5}))
    return study


def big_entry(n: int) -> VaultEntry:
    # One huge body cell (cheap to render) rather than big YAML (slow): the time goes to the write.
    return VaultEntry(id="exp-20261126-proxy-007", date=datetime(2026, 11, 26, 2, 14), mode="proxy", model="demo",
                      score=0.5, baseline=0.45, result="kept", reasons=[f"reason {n}"],
                      params={"NOTE": "v" * n, "LEARNING_RATE": 1e-4}, per_category_delta={"jailbreak": 0.1})


def _rewrite_forever(write: Callable[[int], None]) -> None:
    try:
        i = 1
        while True:
            write(i % 2)
            i += 1
    finally:
        os._exit(0)


def kill_while_writing(target: Path, write: Callable[[int], None], versions: list[bytes],
                       check: Callable[[Path], None]) -> int:
    """KILLS rounds of: fork a rewriting child, SIGKILL it at a random instant, check the
    file. Returns how many kills interrupted a write (temp file left)."""
    rnd = random.Random(7)
    fork = multiprocessing.get_context("fork")
    interrupted = 0
    for _ in range(KILLS):
        child = fork.Process(target=_rewrite_forever, args=(write,))
        child.start()
        time.sleep(rnd.uniform(0.005, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        data = target.read_bytes()
        assert data in versions, f"{target.name} is neither version: {len(data)} bytes"
        check(target)
        leftovers = list(target.parent.glob(f".{target.name}.*.tmp"))
        interrupted += bool(leftovers)
        # A killed writer's temp file: harmless, never the target, and swept by the next night.
        assert sorted(sweep_temp_files(target.parent, recursive=True, older_than_s=0)) == sorted(leftovers)
        assert target.read_bytes() == data
    return interrupted


def test_kill_9_while_results_tsv_is_written(tmp_path):
    studies = [[big_study(200)], [big_study(300)]]
    target = tmp_path / "results.tsv"
    versions = []
    for i, s in enumerate(studies):
        export_results(s, tmp_path / f"v{i}.tsv")
        versions.append((tmp_path / f"v{i}.tsv").read_bytes())
    assert versions[0] != versions[1] and len(versions[1]) > 200_000
    export_results(studies[0], target)

    def check(path: Path) -> None:
        df = pd.read_csv(path, sep="\t")
        assert list(df.columns) == HEADER and len(df) in (200, 300)

    started = time.monotonic()
    interrupted = kill_while_writing(target, lambda v: export_results(studies[v], target), versions, check)
    print(f"{interrupted} of {KILLS} kills landed inside a write")
    assert interrupted >= 1, "no kill landed inside a write: the test proved nothing"
    assert time.monotonic() - started < 30


def test_kill_9_while_a_vault_entry_is_written(tmp_path):
    vault = Vault(tmp_path / "vault")
    entries = [big_entry(3_000_000), big_entry(4_000_000)]
    versions = [render(e).encode() for e in entries]
    assert len(versions[0]) > 200_000
    target = vault.write(entries[0])

    def check(path: Path) -> None:
        meta = read_front_matter(path)
        assert meta["id"] == "exp-20261126-proxy-007" and meta["result"] == "kept"
        assert meta["reasons"] in (["reason 3000000"], ["reason 4000000"])
        assert path.read_text().endswith("## Why\n\n" + "".join(f"- {r}\n" for r in meta["reasons"]))

    started = time.monotonic()
    interrupted = kill_while_writing(target, lambda v: vault.write(entries[v]), versions, check)
    print(f"{interrupted} of {KILLS} kills landed inside a write")
    assert interrupted >= 1, "no kill landed inside a write: the test proved nothing"
    assert time.monotonic() - started < 30
    assert vault.entries() == [target]
