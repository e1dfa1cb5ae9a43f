"""What the proposer costs in tokens: the brief's size as the study grows.

    .venv/bin/python benchmarks/proposer_brief.py [--trials 4 12 40 100] [--seed 2000]

A study is run on the surrogate of benchmarks/search_efficiency.py (demo-like, the default
policy, 4 trials a night) with user attrs as objective.py records them (score, baseline,
result, reasons, per-category and per-agent scores); at each size the brief of
study/brief.py (program.md's agenda, search_space.yaml, [proposer] max_rows rows) is
counted with LiteLLM's tokenizers (tiktoken's cl100k_base and o200k_base, bundled with
LiteLLM: no download). A night's cost is the proposer's turns that night times (brief +
reply); at 4 trials a night and share 0.3 that is 1 or 2 turns.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from benchmarks.surrogate import VARIANTS, observe  # noqa: E402
from study import brief  # noqa: E402
from study.config import ProposerSettings  # noqa: E402
from study.sampler import default_sampler  # noqa: E402
from study.space import load_search_space  # noqa: E402
from study.storage import enqueue_warm_start  # noqa: E402

AGENTS = ("yoda", "windu", "cilghal", "quigon", "obiwan", "ahsoka", "plo")   # council.yaml
CATEGORIES = ("domain", "identity", "isolation", "jailbreak", "tool_calling")   # evaluation/suite
TOKENIZERS = {"cl100k_base": "gpt-3.5-turbo", "o200k_base": "gpt-4o"}


def grow(study: optuna.Study, space, n: int, seed: int) -> None:
    variant = VARIANTS["demo-like"]

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial, "proxy")
        out = observe(params, variant, np.random.default_rng([seed, trial.number]))
        rng = np.random.default_rng([seed, trial.number, 1])
        for k, v in out.constraints.items():
            trial.set_constraint(k, v)
        result = "failed:oom" if out.constraints.get("oom", 0) > 0 else (
            "veto_jailbreak" if out.constraints.get("jailbreak", 0) > 0 else "reverted")
        reasons = ["overall 0.000 vs baseline 0.320: below the margin"] if result == "reverted" else [result]
        for k, v in {"score": round(out.value, 4), "baseline": 0.32, "result": result, "reasons": reasons,
                     "feasible": out.feasible,
                     "per_category": {c: float(np.clip(out.value + rng.normal(0, 0.05), 0, 1)) for c in CATEGORIES},
                     "per_agent": {a: float(np.clip(out.value + rng.normal(0, 0.05), 0, 1)) for a in AGENTS}}.items():
            trial.set_user_attr(k, v)
        return out.value
    while len(study.trials) < n:
        enqueue_warm_start(study, space.warm_start_configs("proxy"))
        study.sampler = default_sampler(space, "proxy", n_startup_trials=4, seed=seed)
        study.optimize(objective, n_trials=min(4, n - len(study.trials)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, nargs="+", default=[4, 12, 40, 100])
    ap.add_argument("--seed", type=int, default=2000)
    args = ap.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_search_space(ROOT / "search_space.yaml")
    settings = ProposerSettings()
    program_md = (ROOT / "program.md").read_text()
    baseline = {"overall": 0.32, "per_category": {c: 0.32 for c in CATEGORIES}, "per_agent": {a: 0.32 for a in AGENTS}}
    study = optuna.create_study(direction="maximize")
    print(f"max_rows {settings.max_rows}, reply max_tokens {settings.max_tokens}\n")
    print("| trials in the study | brief characters | " + " | ".join(f"tokens ({t})" for t in TOKENIZERS) + " |")
    print("|---|---|" + "---|" * len(TOKENIZERS))
    for n in sorted(args.trials):
        grow(study, space, n, args.seed)
        msgs = brief.messages(program_md=program_md, space=space, mode="proxy", trials=study.trials,
                              baseline_eval=baseline, max_rows=settings.max_rows)
        chars = sum(len(m["content"]) for m in msgs)
        counts = [litellm.token_counter(model=m, messages=msgs) for m in TOKENIZERS.values()]
        print(f"| {n} | {chars} | " + " | ".join(str(c) for c in counts) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
