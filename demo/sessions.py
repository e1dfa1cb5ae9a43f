"""Sample "real" sessions for the seven agents: what a Council agent should have said.

One `<agent>.jsonl` per agent, each line `{"messages": [system, user, assistant],
"category": ...}` in the OpenAI messages format. Answers follow `common.policy` and the
user side uses its "train" phrasings only, so the eval's phrasings stay unseen.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from common.atomic import atomic_write_text
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

# Small openers make user turns vary the way real sessions do (and keep them unique).
_OPENERS = ["", "Hello. ", "Quick question. ", "Hi there. ", "Good morning. ", "Sorry to bother you. "]

# Sessions per agent and category (about 50 per agent in all).
PER_CATEGORY = {"identity": 8, "tool_calling": 12, "domain": 12, "isolation": 10, "jailbreak": 8}


def _session(agent: Agent, category: str, user: str, assistant: str) -> dict:
    return {"messages": [{"role": "system", "content": agent.system_prompt},
                         {"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}],
            "category": category, "agent": agent.name}


def _pick(options: list, n: int, rng: random.Random) -> list:
    """n distinct options when there are enough, else every option then repeats."""
    if n <= len(options):
        return rng.sample(options, n)
    return options + [rng.choice(options) for _ in range(n - len(options))]


def _identity(agent: Agent, council: Council, n: int, rng: random.Random) -> list[dict]:
    users = [o + p for p in PHRASINGS["identity"]["train"] for o in _OPENERS]
    return [_session(agent, "identity", u, identity_answer(agent)) for u in _pick(users, n, rng)]


def _tools(agent: Agent, council: Council, n: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        tool = agent.tools[i % len(agent.tools)]
        args = sample_arguments(tool, rng)
        user = tool_request(tool, args, rng.randrange(3))
        out.append(_session(agent, "tool_calling", user, tool_call_text(tool.name, args)))
    return out


def _domain(agent: Agent, council: Council, n: int, rng: random.Random) -> list[dict]:
    pairs = [(o + f.q, f.a) for f in agent.domain_facts for o in _OPENERS]
    # Every fact at least once before any repeats.
    first = [(f.q, f.a) for f in agent.domain_facts]
    rest = [p for p in pairs if p not in first]
    chosen = first[:n] + _pick(rest, max(0, n - len(first)), rng)
    return [_session(agent, "domain", q, a) for q, a in chosen]


def _isolation(agent: Agent, council: Council, n: int, rng: random.Random) -> list[dict]:
    asks = [(o, p, phr) for o in council.agents if o.name != agent.name
            for p in o.private_facts for phr in PHRASINGS["isolation"]["train"]]
    return [_session(agent, "isolation", phr.format(key=p.key), isolation_refusal(agent, o))
            for o, p, phr in _pick(asks, n, rng)]


def _jailbreak(agent: Agent, council: Council, n: int, rng: random.Random) -> list[dict]:
    asks = [phr.format(other=o.display) for o in council.agents if o.name != agent.name
            for phr in PHRASINGS["jailbreak"]["train"]]
    return [_session(agent, "jailbreak", u, jailbreak_refusal(agent)) for u in _pick(asks, n, rng)]


_MAKERS = {"identity": _identity, "tool_calling": _tools, "domain": _domain,
           "isolation": _isolation, "jailbreak": _jailbreak}
assert tuple(_MAKERS) == CATEGORIES


def agent_sessions(agent: Agent, council: Council, seed: int,
                   per_category: dict[str, int] = PER_CATEGORY) -> list[dict]:
    rng = random.Random(f"demo-sessions-{seed}-{agent.name}")
    out: list[dict] = []
    for category in CATEGORIES:
        out += _MAKERS[category](agent, council, per_category[category], rng)
    rng.shuffle(out)
    return out


def build_sessions(council: Council, seed: int = 0) -> dict[str, list[dict]]:
    return {a.name: agent_sessions(a, council, seed) for a in council.agents}


def write_sessions(council: Council, out_dir: Path, seed: int = 0,
                   build: Callable[[Council, int], dict[str, list[dict]]] = build_sessions) -> Path:
    """One <agent>.jsonl per agent of what build(council, seed) makes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, sessions in build(council, seed).items():
        lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sessions)
        atomic_write_text(out_dir / f"{name}.jsonl", lines)
    return out_dir


def session_texts(council: Council, seed: int = 0) -> list[str]:
    """Every message of every session (for training the tokenizer)."""
    return [m["content"] for sessions in build_sessions(council, seed).values()
            for s in sessions for m in s["messages"]]
