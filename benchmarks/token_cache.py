"""Tokenising a split once per data variant: the first trial's load_split against a later one's.

    .venv/bin/python benchmarks/token_cache.py [--repeat 5]

The demo model's tokenizer and the demo corpus at the baseline mix (corpus.prepare, as the
night builds it), in a temp copy of the split files so nothing cached elsewhere is read.
Per repeat: a miss (the cache folder removed first: what every trial paid before) and a hit
(what each later trial on the same variant pays), alternated; medians printed.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import corpus  # noqa: E402
from demo import ensure_demo  # noqa: E402
from train_core.data import TOKEN_CACHE, load_split, tokenizer_fingerprint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "test-demo")
    args = ap.parse_args(argv)
    from mlx_lm.utils import load_tokenizer

    assets = ensure_demo(args.cache, ROOT / "council.yaml", pretrain_seconds=20, progress=False)
    data = corpus.prepare(assets.sessions_dir, ROOT / "council.yaml", args.cache / "budget-data", mix_ratio=0.5)
    tok, tid = load_tokenizer(Path(assets.model_dir)), tokenizer_fingerprint(assets.model_dir)
    work = Path(tempfile.mkdtemp(prefix="token-cache-"))
    times: dict[str, list[float]] = {"miss": [], "hit": []}
    try:
        for split in ("train", "valid"):
            shutil.copy(data.dir / f"{split}.jsonl", work)
        for _ in range(args.repeat):
            shutil.rmtree(work / TOKEN_CACHE, ignore_errors=True)
            for kind in ("miss", "hit"):
                t0 = time.perf_counter()
                for split in ("train", "valid"):
                    load_split(work, split, tok, mask_prompt=True, max_seq_length=1280, tokenizer_id=tid)
                times[kind].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = sum(1 for _ in (data.dir / "train.jsonl").open()) + sum(1 for _ in (data.dir / "valid.jsonl").open())
    miss, hit = (statistics.median(times[k]) for k in ("miss", "hit"))
    print(f"{rows} rows (train + valid): tokenised {miss * 1000:.1f} ms, from the cache {hit * 1000:.1f} ms "
          f"({miss / hit:.0f}x), medians of {args.repeat}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
