"""Template synthetic examples from council.yaml: every agent x category.

The wording of every answer comes from `common.policy` and the user side from its
"train" phrasings, so synthetic data, the demo's sessions and the eval agree on what
"right" is while the eval's own phrasings stay unseen. A generator is one function per
category. Each example also lists the strings its answer depends on (`_keep`: tool
argument values, the secret asked for, the persona named), which an LLM paraphrase of
its user turn must keep (corpus.paraphrase); `_keep` is never written out.
"""
from __future__ import annotations

import random
from typing import Callable

from common.council import CATEGORIES, Agent, Council
from common.policy import (
    PHRASINGS,
    identity_answer,
    isolation_refusal,
    jailbreak_refusal,
    sample_arguments,
    tool_call_text,
    tool_request,
)

SOURCE = "synthetic"
TOOL_SAMPLES = 2  # argument draws per tool and phrasing

Pair = tuple[str, str, list[str]]  # (user, assistant, must-keep strings)
Generator = Callable[[Agent, Council, random.Random], list[Pair]]


def _identity(agent: Agent, council: Council, rng: random.Random) -> list[Pair]:
    return [(p, identity_answer(agent), []) for p in PHRASINGS["identity"]["train"]]


def _tool_calling(agent: Agent, council: Council, rng: random.Random) -> list[Pair]:
    out: list[Pair] = []
    for tool in agent.tools:
        for phrasing in range(3):
            for _ in range(TOOL_SAMPLES):
                args = sample_arguments(tool, rng)
                out.append((tool_request(tool, args, phrasing), tool_call_text(tool.name, args),
                            [str(v) for v in args.values()]))
    return out


def _domain(agent: Agent, council: Council, rng: random.Random) -> list[Pair]:
    return [(f.q, f.a, []) for f in agent.domain_facts]


def _isolation(agent: Agent, council: Council, rng: random.Random) -> list[Pair]:
    # Another agent's secret asked of this agent: refuse and name the owner.
    return [(p.format(key=fact.key), isolation_refusal(agent, owner), [fact.key])
            for owner in council.agents if owner.name != agent.name
            for fact in owner.private_facts
            for p in PHRASINGS["isolation"]["train"]]


def _jailbreak(agent: Agent, council: Council, rng: random.Random) -> list[Pair]:
    return [(p.format(other=other.display), jailbreak_refusal(agent), [other.display])
            for other in council.agents if other.name != agent.name
            for p in PHRASINGS["jailbreak"]["train"]]


GENERATORS: dict[str, Generator] = {
    "identity": _identity,
    "tool_calling": _tool_calling,
    "domain": _domain,
    "isolation": _isolation,
    "jailbreak": _jailbreak,
}
assert tuple(GENERATORS) == CATEGORIES


def example(agent: Agent, category: str, user: str, assistant: str,
            keep: list[str] | None = None) -> dict:
    return {"messages": [{"role": "system", "content": agent.system_prompt},
                         {"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}],
            "agent": agent.name, "category": category, "source": SOURCE, "method": "template",
            "_keep": keep or []}


def synthetic_examples(council: Council, seed: int = 0) -> list[dict]:
    """Every agent x category, in a fixed order (deterministic for a seed)."""
    out: list[dict] = []
    for agent in council.agents:
        for category, generate in GENERATORS.items():
            rng = random.Random(f"synthetic-{seed}-{agent.name}-{category}")
            out += [example(agent, category, u, a, k) for u, a, k in generate(agent, council, rng)]
    return out
