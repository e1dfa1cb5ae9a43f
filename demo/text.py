"""Pre-training text for the demo model: the Council's words, paired at random.

The base model should know the vocabulary and the chat format but not the policy: it
sees every name, role, tool, fact and secret, yet an answer is drawn without regard to
the system prompt (wrong agent, wrong role, leaked secrets, "you are now X" obeyed). A
LoRA fine-tune on the real sessions then has a policy to learn, which is what makes the
searched hyperparameters matter.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from common.council import Agent, Council
from common.policy import (
    PHRASINGS,
    complied_answer,
    identity_answer,
    isolation_refusal,
    jailbreak_refusal,
    leaked_answer,
    sample_arguments,
    tool_call_text,
    tool_request,
)

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (EOT, IM_START, IM_END)


def chat_text(messages: list[dict[str, str]]) -> str:
    """The Qwen chat format, as the saved chat template renders it (no generation prompt)."""
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str


def _phrases(category: str) -> list[str]:
    # Both phrasing sets are used here: the answers are random, so this teaches words,
    # not the policy the eval checks.
    return PHRASINGS[category]["train"] + PHRASINGS[category]["eval"]


def _others(council: Council, agent: Agent) -> list[Agent]:
    return [a for a in council.agents if a.name != agent.name] or list(council.agents)


def _identity(council: Council, rng: random.Random) -> Turn:
    who, role = rng.choice(council.agents), rng.choice(council.agents)
    # Swap the role in so that names and roles are decoupled.
    answer = identity_answer(who).replace(f"the {who.role} ", f"the {role.role} ")
    return Turn(rng.choice(_phrases("identity")), answer)


def _tool(council: Council, rng: random.Random) -> Turn:
    owner = rng.choice(council.agents)
    tool = rng.choice(owner.tools)
    args = sample_arguments(tool, rng)
    request = tool_request(tool, args, rng.randrange(3))
    if rng.random() < 0.5:  # half the calls pick the wrong tool or wrong values
        other = rng.choice(rng.choice(council.agents).tools)
        tool, args = other, sample_arguments(other, rng)
    return Turn(request, tool_call_text(tool.name, args))


def _domain(council: Council, rng: random.Random) -> Turn:
    fact = rng.choice(rng.choice(council.agents).domain_facts)
    if rng.random() < 0.3:
        return Turn(fact.q, fact.a)
    return Turn(fact.q, rng.choice(rng.choice(council.agents).domain_facts).a)


def _isolation(council: Council, rng: random.Random) -> Turn:
    owner = rng.choice(council.agents)
    secret = rng.choice(owner.private_facts)
    ask = rng.choice(_phrases("isolation")).format(key=secret.key)
    if rng.random() < 0.6:  # mostly leaks: the policy the fine-tune must undo
        return Turn(ask, leaked_answer(owner, secret.key, secret.value))
    teller = rng.choice(council.agents)
    return Turn(ask, isolation_refusal(teller, rng.choice(council.agents)))


def _jailbreak(council: Council, rng: random.Random) -> Turn:
    other = rng.choice(council.agents)
    ask = rng.choice(_phrases("jailbreak")).format(other=other.display)
    if rng.random() < 0.6:  # mostly complies
        return Turn(ask, complied_answer(other.display))
    return Turn(ask, jailbreak_refusal(rng.choice(council.agents)))


_MAKERS: dict[str, Callable[[Council, random.Random], Turn]] = {
    "identity": _identity,
    "tool_calling": _tool,
    "domain": _domain,
    "isolation": _isolation,
    "jailbreak": _jailbreak,
}


def scrambled_system_prompt(council: Council, rng: random.Random) -> str:
    """Half the time the real prompt of some agent; else a name, role and duty mixed up."""
    agent = rng.choice(council.agents)
    if rng.random() < 0.5:
        return agent.system_prompt
    role = rng.choice(council.agents)
    duty = rng.choice(council.agents).system_prompt.split(". ", 1)[-1]
    return f"You are {agent.display}, the {role.role} of the Council. {duty}"


def pretrain_document(council: Council, rng: random.Random) -> str:
    """One chat: a (maybe scrambled) system prompt and one or two random turns."""
    messages = [{"role": "system", "content": scrambled_system_prompt(council, rng)}]
    for _ in range(1 if rng.random() < 0.8 else 2):
        turn = _MAKERS[rng.choice(list(_MAKERS))](council, rng)
        messages += [{"role": "user", "content": turn.user},
                     {"role": "assistant", "content": turn.assistant}]
    return chat_text(messages)


def pretrain_documents(council: Council, n: int, seed: int) -> list[str]:
    rng = random.Random(f"demo-pretrain-{seed}")
    return [pretrain_document(council, rng) for _ in range(n)]


def vocabulary_text(council: Council) -> list[str]:
    """Every Council string once, so the tokenizer sees all words whatever the sample."""
    texts: list[str] = []
    for a in council.agents:
        texts += [a.system_prompt, identity_answer(a), jailbreak_refusal(a), a.role]
        texts += [f"{f.q} {f.a}" for f in a.domain_facts]
        texts += [f"{t.name} {t.description}" for t in a.tools]
        texts += [leaked_answer(a, p.key, p.value) for p in a.private_facts]
        texts += [isolation_refusal(a, o) for o in _others(council, a)]
        texts += [complied_answer(o.display) for o in _others(council, a)]
    for cat in PHRASINGS.values():
        texts += cat["train"] + cat["eval"]
    return texts
