"""Reading session logs: JSONL, one conversation per line, in the OpenAI messages format.

A line: {"messages": [...], "agent"?: str, "category"?: str, "source"?: "real"|"synthetic"}.
Messages are {"role": system|user|assistant|tool, "content": str | [{"type": "text",
"text": str}, ...] | null}; an assistant's OpenAI `tool_calls` become the Council's
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` text. Other keys are ignored.

A malformed line is dropped and counted by reason (with the first few `file:line: why`
kept for the manifest), since real exports carry the odd broken record. A file whose
lines are mostly malformed is a wrong export, not noise: that is a ConfigError naming
the file and its first bad line, so nobody trains on half a corpus.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common.council import CATEGORIES, Council
from common.errors import ConfigError
from common.policy import tool_call_text

SOURCE = "real"
SOURCES = ("real", "synthetic")
ROLES = {"system", "user", "assistant", "tool"}
UNKNOWN = "unknown"
MAX_MALFORMED_FRACTION = 0.5
MALFORMED_REASONS = ("invalid_json", "not_an_object", "bad_messages", "bad_tool_calls",
                     "no_assistant", "bad_category", "bad_source")
_EXAMPLES_KEPT = 10


class Malformed(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class SessionFile:
    path: Path
    examples: list[dict]
    lines: int
    malformed: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # "file:line: why", first few


def session_files(sessions_dir: Path) -> list[Path]:
    if not sessions_dir.is_dir():
        raise ConfigError(str(sessions_dir), None, "sessions folder not found")
    return sorted(p for p in sessions_dir.glob("*.jsonl") if p.is_file())


def _content(m: dict, i: int) -> str:
    content = m.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in parts):
            return "".join(parts)
    raise Malformed("bad_messages", f"messages[{i}].content must be a string, text parts or null")


def _tool_calls(m: dict, i: int) -> str:
    """OpenAI `tool_calls` as the Council's <tool_call> text."""
    out = []
    for call in m.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Malformed("bad_tool_calls", f"messages[{i}].tool_calls needs function.name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise Malformed("bad_tool_calls", f"messages[{i}].tool_calls arguments are not JSON") from None
        if not isinstance(args, dict):
            raise Malformed("bad_tool_calls", f"messages[{i}].tool_calls arguments must be an object")
        out.append(tool_call_text(fn["name"], args))
    return "".join(out)


def parse_messages(messages: object) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise Malformed("bad_messages", "'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Malformed("bad_messages", f"messages[{i}] must be an object")
        role = "tool" if m.get("role") == "function" else m.get("role")
        if role not in ROLES:
            raise Malformed("bad_messages", f"messages[{i}].role must be one of {sorted(ROLES)}, "
                                            f"got {m.get('role')!r}")
        text = _content(m, i)
        if role == "assistant":
            text += _tool_calls(m, i)
        out.append({"role": role, "content": text})
    if not any(m["role"] == "assistant" for m in out):
        raise Malformed("no_assistant", "no assistant message to learn from")
    return out


def _agent_of(obj: dict, messages: list[dict], path: Path, council: Council) -> str:
    """Explicit `agent`, else the file's name, else the agent whose system prompt it is."""
    if isinstance(obj.get("agent"), str):
        return obj["agent"]
    if path.stem in council.names:
        return path.stem
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return next((a.name for a in council.agents if a.system_prompt == system), UNKNOWN)


def parse_line(text: str, path: Path, council: Council) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Malformed("invalid_json", f"invalid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise Malformed("not_an_object", "each line must be a JSON object")
    messages = parse_messages(obj.get("messages"))
    category = obj.get("category", UNKNOWN)
    if category not in CATEGORIES and category != UNKNOWN:
        raise Malformed("bad_category", f"category must be one of {list(CATEGORIES)}, got {category!r}")
    source = obj.get("source", SOURCE)
    if source not in SOURCES:
        raise Malformed("bad_source", f"source must be one of {list(SOURCES)}, got {source!r}")
    return {"messages": messages, "agent": _agent_of(obj, messages, path, council),
            "category": category, "source": source}


def read_session_file(path: Path, council: Council,
                      max_malformed: float = MAX_MALFORMED_FRACTION) -> SessionFile:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    out = SessionFile(path=path, examples=[], lines=len(lines))
    first_bad: tuple[int, Malformed] | None = None
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            out.examples.append(parse_line(text, path, council))
        except Malformed as exc:
            out.malformed[exc.reason] += 1
            first_bad = first_bad or (lineno, exc)
            if len(out.problems) < _EXAMPLES_KEPT:
                out.problems.append(f"{path.name}:{lineno}: {exc}")
    bad = sum(out.malformed.values())
    if first_bad and bad > max_malformed * (bad + len(out.examples)):
        lineno, exc = first_bad
        raise ConfigError(str(path), f"line {lineno}",
                          f"{exc} ({bad} of {bad + len(out.examples)} lines malformed)")
    return out


def read_sessions(sessions_dir: Path, council: Council) -> list[SessionFile]:
    return [read_session_file(p, council) for p in session_files(sessions_dir)]
