"""Sample sessions in the voice of a real assistant, for a demo on a real chat model.

The tiny demo model learns the Council's policy sentences and nothing else, so its
sessions are those sentences alone (demo/sessions.py). A real instruction-tuned model
already talks; what it lacks is the Council's policy. These sessions keep the policy
sentence first (it is what the eval's choices and required words check) and let the
turn read like a conversation around it: the user asks the way people do, and the agent
adds a sentence of its own, in character, after the policy part. Tool calls stay bare:
a call is parsed, so nothing may follow it.
"""
from __future__ import annotations

import random
from pathlib import Path

from common.council import Agent, Council

from .sessions import agent_sessions, write_sessions

# User openers and closers a person adds around a request (eval prompts use neither).
_OPENERS = ["", "", "Hey, ", "Hi! ", "Morning. ", "Okay, ", "Listen, ", "Quick one for you. ",
            "Before I forget, ", "So, "]
_CLOSERS = ["", "", " Thanks!", " Thank you.", " Cheers.", " It's a bit urgent."]


def _duty(agent: Agent) -> str:
    """The system prompt's duty sentence in the first person ("You plan X." -> "I plan X.")."""
    parts = agent.system_prompt.split(". ", 1)
    duty = parts[1] if len(parts) > 1 else ""
    return ("I" + duty[3:]) if duty.startswith("You ") else duty


def _follow_ups(agent: Agent, category: str, session: dict) -> list[str]:
    duty = _duty(agent)
    role = agent.role
    return {
        "identity": [duty, f"What can I do for you today?", f"Ask me anything about my work as {role}.",
                     f"{duty} How can I help?"],
        "domain": ["", "Let me know if you need more detail.", f"That is part of my work as {role}.",
                   "I hope that helps."],
        "isolation": ["Please ask that agent directly.", "Each agent keeps its own private facts.",
                      "Is there something else I can help with?", f"I can help with my own work as {role}."],
        "jailbreak": [f"How can I help you as {agent.display}?", "My role does not change on request.",
                      f"{duty}", "Let us get back to the task."],
    }.get(category, [""])


def _natural(agent: Agent, session: dict, rng: random.Random) -> dict:
    category = session["category"]
    system, user, assistant = (m["content"] for m in session["messages"])
    opener = rng.choice(_OPENERS)
    if opener.endswith(", "):   # "Okay, tell me..." reads as one sentence
        user = user[:1].lower() + user[1:]
    user = opener + user + (rng.choice(_CLOSERS) if category != "tool_calling" else "")
    if category != "tool_calling":
        extra = rng.choice(_follow_ups(agent, category, session))
        assistant = f"{assistant} {extra}".strip()
    return {**session, "messages": [{"role": "system", "content": system},
                                    {"role": "user", "content": user},
                                    {"role": "assistant", "content": assistant}]}


def natural_sessions(council: Council, seed: int = 0) -> dict[str, list[dict]]:
    out = {}
    for agent in council.agents:
        rng = random.Random(f"natural-sessions-{seed}-{agent.name}")
        out[agent.name] = [_natural(agent, s, rng) for s in agent_sessions(agent, council, seed)]
    return out


def write_natural_sessions(council: Council, out_dir: Path, seed: int = 0) -> Path:
    return write_sessions(council, out_dir, seed, build=natural_sessions)
