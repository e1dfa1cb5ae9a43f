"""Reading real sessions: one `{"messages": [...]}` object per line, validated as read.

A bad line is a ConfigError naming the file and its line number, so the owner can fix
the export instead of training on half a corpus.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.council import CATEGORIES, Council
from common.errors import ConfigError

SOURCE = "real"
ROLES = {"system", "user", "assistant", "tool"}
UNKNOWN = "unknown"


@dataclass(frozen=True)
class SessionFile:
    path: Path
    examples: list[dict]
    lines: int


def session_files(sessions_dir: Path) -> list[Path]:
    if not sessions_dir.is_dir():
        raise ConfigError(str(sessions_dir), None, "sessions folder not found")
    return sorted(p for p in sessions_dir.glob("*.jsonl") if p.is_file())


def _check_messages(messages: object) -> str | None:
    """What is wrong with a messages list, or None."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return f"messages[{i}] needs a string 'content'"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role must be one of {sorted(ROLES)}, got {m.get('role')!r}"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message to learn from"
    return None


def _agent_of(obj: dict, path: Path, council: Council) -> str:
    """Explicit `agent`, else the file's name, else the agent whose system prompt it is."""
    if isinstance(obj.get("agent"), str):
        return obj["agent"]
    if path.stem in council.names:
        return path.stem
    system = next((m["content"] for m in obj["messages"] if m["role"] == "system"), None)
    return next((a.name for a in council.agents if a.system_prompt == system), UNKNOWN)


def parse_line(text: str, path: Path, lineno: int, council: Council) -> dict:
    where = f"line {lineno}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), where, f"invalid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ConfigError(str(path), where, "each line must be a JSON object")
    problem = _check_messages(obj.get("messages"))
    if problem:
        raise ConfigError(str(path), where, problem)
    category = obj.get("category", UNKNOWN)
    if category not in CATEGORIES and category != UNKNOWN:
        raise ConfigError(str(path), f"{where}: category",
                          f"must be one of {list(CATEGORIES)}, got {category!r}")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in obj["messages"]],
            "agent": _agent_of(obj, path, council), "category": category, "source": SOURCE}


def read_session_file(path: Path, council: Council) -> SessionFile:
    examples: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, text in enumerate(lines, start=1):
        if text.strip():
            examples.append(parse_line(text, path, lineno, council))
    return SessionFile(path=path, examples=examples, lines=len(lines))


def read_sessions(sessions_dir: Path, council: Council) -> list[SessionFile]:
    return [read_session_file(p, council) for p in session_files(sessions_dir)]
