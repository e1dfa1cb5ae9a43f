"""The Council eval harness: `python -m evaluation --model M [--adapter A]`.

Knows nothing of Optuna. Public API:
    EvalConfig, run_eval                      (evaluation.harness)
    write_eval_results, read_eval_results,
    model_sha256, adapter_sha256              (evaluation.results)
    load_suite, Case                          (evaluation.suite)
    SCORERS, Score, strip_think               (evaluation.scorers)
"""
from .results import adapter_sha256, model_sha256, read_eval_results, write_eval_results
from .scorers import SCORERS, Score, strip_think
from .suite import Case, load_suite

__all__ = ["EvalConfig", "run_eval", "write_eval_results", "read_eval_results", "model_sha256",
           "adapter_sha256", "load_suite", "Case", "SCORERS", "Score", "strip_think"]


def __getattr__(name: str):
    # The harness imports mlx / mlx_lm; load it only when asked, so reading results or
    # validating the suite stays cheap.
    if name in ("EvalConfig", "run_eval"):
        from . import harness
        return getattr(harness, name)
    raise AttributeError(name)
