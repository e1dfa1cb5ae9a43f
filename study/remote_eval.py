"""Where the Council eval runs: here (the usual case), or on the training node when the
base model lives only there (`[modes.full] eval_on = "node"`: a 35B model the always-on
machine cannot hold).

An evaluator is three calls, the same for both places, so the night (baseline eval,
canary, each trial's eval) never asks where it runs:
  evaluator(cfg, progress=...)  -> eval results (the dict eval_results.json holds)
  evaluator.model_sha256(model) -> the base model's identity (keys the shared baseline)
  evaluator.canary(cfg)         -> [] when one case per category goes through cleanly

On the node (W = the node's working folder; see study/remote.py for the rest of it):
  W/code/{train_core,common,evaluation}/   W/eval/<name>/{council.yaml,adapter/,eval_results.json}
one rsync sends the code (what changed), council.yaml and the adapter; `python -m
evaluation` runs there against the node's model; one rsync brings eval_results.json back;
W/eval/<name>/ is removed. A lost connection is RemoteLost (the trial: failed:remote_lost);
exit 2 from the eval is bad input, raised as ConfigError with the eval's own message.
"""
from __future__ import annotations

import dataclasses
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from evaluation import EvalConfig, canary as local_canary, read_eval_results, run_eval
from evaluation.cli import EXIT_CHECK, EXIT_CONFIG
from evaluation.results import model_sha256 as local_model_sha256

from study.remote import CODE_PACKAGES, Layout, NodeLink, RemoteError, _safe, _tail, remote_path

EVAL_PACKAGES = (*CODE_PACKAGES, "evaluation")


class LocalEvaluator:
    """The eval on this machine, in this process."""

    def __call__(self, cfg: EvalConfig, progress: bool = False) -> dict[str, Any]:
        return run_eval(cfg, progress=progress)

    def model_sha256(self, model: str | Path) -> str:
        return local_model_sha256(model)

    def canary(self, cfg: EvalConfig) -> list[str]:
        return local_canary(cfg)


@dataclass
class RemoteEvaluator(NodeLink):
    """The eval on the node, against the node's copy of the base model (cfg.model, a local
    path, is ignored: the node's model is the one the adapters were trained on)."""

    timeout_s: float = 3600.0
    _model_sha: str = field(default="", repr=False)

    def model_sha256(self, model: str | Path | None = None) -> str:
        if not self._model_sha:
            lay = self.layout()
            self._push(lay, "", None)
            code = "import sys; from evaluation.results import model_sha256; print(model_sha256(sys.argv[1]))"
            out = self._ssh(f"cd {shlex.quote(lay.code())} && {remote_path(self.node.python)} -c "
                            f"{shlex.quote(code)} {shlex.quote(lay.model)}", timeout_s=self.timeout_s)
            sha = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
            if out.returncode != 0 or len(sha) != 64:
                raise RemoteError(f"model sha256 on {self.node.host} failed (exit {out.returncode}): "
                                  f"{_tail(out.stderr)}")
            self._model_sha = sha
        return self._model_sha

    def canary(self, cfg: EvalConfig) -> list[str]:
        try:
            self._run(dataclasses.replace(cfg, smoke=True), smoke=True)
        except _SmokeFailed as exc:
            return [str(exc)]
        return []

    def __call__(self, cfg: EvalConfig, progress: bool = False) -> dict[str, Any]:
        return self._run(cfg, smoke=False)

    # -- the steps --------------------------------------------------------------------
    def _push(self, lay: Layout, name: str, cfg: EvalConfig | None) -> None:
        with tempfile.TemporaryDirectory(prefix="council-eval-push-") as tmp:
            stage = Path(tmp)
            self.stage_code(stage, self.code_root, EVAL_PACKAGES)
            if cfg is not None:
                job = stage / "eval" / name
                job.mkdir(parents=True)
                (job / "council.yaml").symlink_to(Path(cfg.council_path).resolve())
                if cfg.adapter:
                    (job / "adapter").symlink_to(Path(cfg.adapter).resolve())
            self.push_stage(stage, lay)

    def _command(self, lay: Layout, job: str, cfg: EvalConfig, smoke: bool) -> str:
        argv = ["-m", "evaluation", "--model", lay.model, "--council", f"{job}/council.yaml",
                "--out", f"{job}/eval_results.json", "--seed", str(cfg.seed), "--max-tokens", str(cfg.max_tokens),
                "--splits", ",".join(cfg.splits), "--batch-size", str(cfg.batch_size),
                "--choice-mode", cfg.choice_mode, "--no-progress"]
        if cfg.adapter:
            argv += ["--adapter", f"{job}/adapter"]
        if cfg.categories:
            argv += ["--categories", ",".join(cfg.categories)]
        if smoke:
            argv.append("--smoke")
        return f"cd {shlex.quote(lay.code())} && {remote_path(self.node.python)} {shlex.join(argv)}"

    def _run(self, cfg: EvalConfig, smoke: bool) -> dict[str, Any]:
        self.timings = {}
        lay = self.layout()
        name = _safe(Path(cfg.adapter).name if cfg.adapter else "base", "adapter")
        name = f"{name}-{'smoke' if smoke else 'full'}-{time.time_ns()}"
        job = f"{lay.workdir}/eval/{name}"
        t0 = time.monotonic()
        self._push(lay, name, cfg)
        self._timed("push_s", t0)
        try:
            t0 = time.monotonic()
            out = self._ssh(self._command(lay, job, cfg, smoke), timeout_s=self.timeout_s)
            self._timed("eval_s", t0)
            if out.returncode == EXIT_CONFIG:
                raise ConfigError(None, None, f"eval on {self.node.host}: {_tail(out.stderr, 1)} (paths on the node)")
            if smoke and out.returncode == EXIT_CHECK:
                raise _SmokeFailed(f"eval canary on {self.node.host}: {_tail(out.stderr + out.stdout, 3)}")
            if out.returncode != 0:
                raise RemoteError(f"eval on {self.node.host} exited with {out.returncode}: {_tail(out.stderr)}")
            if smoke:
                return {}
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="council-eval-fetch-") as tmp:
                # the results and their sha256 trailer, which read_eval_results checks
                self._rsync([f"{self.node.host}:{job}/"], f"{tmp}/", "--exclude", "adapter", "--exclude", "council.yaml")
                results = read_eval_results(Path(tmp) / "eval_results.json")
            self._timed("fetch_s", t0)
            return results
        finally:
            try:  # best effort: the results are here; a node that just vanished fails the next call
                self._ssh(f"rm -rf -- {shlex.quote(job)}")
            except Exception:  # noqa: BLE001 - RemoteLost included: nothing here is left to save
                pass


class _SmokeFailed(Exception):
    pass


def make_evaluator(mode_settings: Any, root: Path | None = None) -> LocalEvaluator | RemoteEvaluator:
    """From a mode's settings: RemoteEvaluator when `eval_on = "node"` (full mode only)."""
    if getattr(mode_settings, "eval_on", "local") != "node":
        return LocalEvaluator()
    from study.remote import Node
    return RemoteEvaluator(Node.from_settings(mode_settings, root),
                           timeout_s=max(600.0, 4 * float(mode_settings.eval_s)))

