"""ensure_demo: build the tiny local model and sample sessions once, then reuse them.

The cache folder is keyed by everything that changes the result (this code's version,
council.yaml's bytes, the pre-training budget, the seed). A build happens in a temp
folder beside the cache entry and is renamed into place only after its COMPLETE marker
is written, so a crash never leaves something that looks finished; a lock file makes a
second concurrent caller wait and then reuse the first caller's build.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from common.atomic import atomic_write_json, atomic_write_text
from common.council import Council, load_council
from common.errors import ConfigError

# Bump when anything that changes the built model or sessions changes.
BUILD_VERSION = "demo-2"
COMPLETE = "COMPLETE"
MODEL_DIR, SESSIONS_DIR = "model", "sessions"
# More than a 100 s budget consumes here (~800 at batch 8); repeats are harmless.
PRETRAIN_DOCS = 8000
TOKENIZER_DOCS = 4000  # plus every Council string once: enough for a 1024-token BPE


@dataclass(frozen=True)
class DemoAssets:
    model_dir: Path      # a normal mlx-lm model folder: mlx_lm.load(model_dir) opens it
    sessions_dir: Path   # <agent>.jsonl per Council agent


def cache_key(council_bytes: bytes, pretrain_seconds: float, seed: int) -> str:
    h = hashlib.sha256()
    for part in (BUILD_VERSION.encode(), council_bytes, repr(float(pretrain_seconds)).encode(),
                 str(int(seed)).encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _assets(folder: Path) -> DemoAssets:
    return DemoAssets(model_dir=folder / MODEL_DIR, sessions_dir=folder / SESSIONS_DIR)


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo(cache_dir: Path, council_path: Path, *, pretrain_seconds: float = 100.0,
                seed: int = 0, progress: bool = True, force: bool = False) -> DemoAssets:
    """The demo model and sessions for this Council, built on first use (minutes), then
    cached (force: built again)."""
    cache_dir, council_path = Path(cache_dir), Path(council_path)
    if not pretrain_seconds > 0:
        raise ConfigError(None, "pretrain_seconds", f"must be > 0, got {pretrain_seconds}")
    council = load_council(council_path)  # validates first: a bad file raises ConfigError
    key = cache_key(council_path.read_bytes(), pretrain_seconds, seed)

    def build(tmp: Path) -> None:
        build_into(tmp, council, pretrain_seconds=pretrain_seconds, seed=seed, progress=progress, key=key)

    return _assets(cached_build(cache_dir / f"demo-{key[:12]}", build, force=force))


def cached_build(final: Path, build: Callable[[Path], None], *, force: bool = False) -> Path:
    """`final`, built by build(tmp) on first use: in a temp folder beside it, renamed into
    place once build() has written its COMPLETE marker; a concurrent caller waits on a lock
    file and then reuses that build. force: build again even when complete."""
    if is_complete(final) and not force:
        return final
    with _locked(final.parent / f".{final.name}.lock"):
        if is_complete(final) and not force:  # another caller finished while we waited
            return final
        _remove(final)          # a half folder (or a link to one) without the marker: rebuild
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            build(tmp)
            _make_readable(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _make_readable(folder: Path) -> None:
    """mkdtemp and the atomic writers make owner-only entries; a model folder is shared."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_into(folder: Path, council: Council, *, pretrain_seconds: float, seed: int,
               progress: bool, key: str = "") -> dict:
    """Build everything into `folder` and write its COMPLETE marker last."""
    from common.fastblas import enable as enable_fast_blas

    fast_blas = enable_fast_blas(folder.parent)  # before mlx's first matrix product
    # Imported here: mlx and tokenizers cost seconds, and a cache hit needs neither.
    from .model import ModelShape, config_dict, create_model, parameter_count, save_model
    from .pretrain import PretrainArgs
    from .sessions import session_texts, write_sessions
    from .text import EOT, IM_END, pretrain_documents, vocabulary_text
    from .tokenizer import save_tokenizer, special_ids, train_tokenizer

    t0 = time.perf_counter()
    model_dir, sessions_dir = folder / MODEL_DIR, folder / SESSIONS_DIR
    write_sessions(council, sessions_dir, seed)
    docs = pretrain_documents(council, PRETRAIN_DOCS, seed)
    tok = train_tokenizer(docs[:TOKENIZER_DOCS] + session_texts(council, seed)
                          + vocabulary_text(council))
    ids = special_ids(tok)
    config = config_dict(ModelShape(vocab_size=tok.get_vocab_size()), ids[IM_END], ids[EOT])
    model = create_model(config, seed)
    encoded = [e.ids for e in tok.encode_batch(docs)]
    args = PretrainArgs(seconds=pretrain_seconds, seed=seed)
    report = _run_pretrain(model, encoded, ids[EOT], args, progress)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, model_dir)
    save_model(model, config, model_dir)
    info = {"build_version": BUILD_VERSION, "key": key, "seed": seed,
            "pretrain_seconds": pretrain_seconds, "fast_blas": fast_blas,
            "parameters": parameter_count(model), "pretrain": report.as_dict(),
            "build_seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(folder / "build.json", info)
    atomic_write_text(folder / COMPLETE, key + "\n")
    return info


def _run_pretrain(model, encoded, pad_id, args, progress: bool):
    from .pretrain import pretrain

    if not progress:
        return pretrain(model, encoded, pad_id, args)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("demo pre-training"), BarColumn(), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("pretrain", total=args.seconds, loss="")

        def on_step(elapsed: float, loss: float) -> None:
            bar.update(task, completed=min(elapsed, args.seconds), loss=f"loss {loss:.3f}")

        return pretrain(model, encoded, pad_id, args, on_step)


def read_build_info(assets: DemoAssets) -> dict:
    import json

    return json.loads((assets.model_dir.parent / "build.json").read_text())
