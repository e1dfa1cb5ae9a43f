"""The Council eval harness: `python -m evaluation --model M [--adapter A]`.

Knows nothing of Optuna. Public API:
    EvalConfig, run_eval, evaluate_to_file,
    canary, check_determinism                 (evaluation.harness)
    BudgetExceeded                            (evaluation.resume)
    JudgeConfig                               (evaluation.judge)
    write_eval_results, read_eval_results,
    model_sha256, adapter_sha256              (evaluation.results)
    load_suite, Case                          (evaluation.suite)
    SCORERS, Score, strip_think               (evaluation.scorers)
"""
from .judge import JudgeConfig
from .results import adapter_sha256, model_sha256, read_eval_results, write_eval_results
from .scorers import SCORERS, Score, strip_think
from .resume import BudgetExceeded
from .suite import Case, load_suite

_HARNESS = ("EvalConfig", "run_eval", "evaluate_to_file", "canary", "check_determinism")

__all__ = [*_HARNESS, "BudgetExceeded", "JudgeConfig", "write_eval_results", "read_eval_results", "model_sha256",
           "adapter_sha256", "load_suite", "Case", "SCORERS", "Score", "strip_think"]


def __getattr__(name: str):
    # The harness imports mlx / mlx_lm; load it only when asked, so reading results or
    # validating the suite stays cheap.
    if name in _HARNESS:
        from . import harness
        return getattr(harness, name)
    raise AttributeError(name)
