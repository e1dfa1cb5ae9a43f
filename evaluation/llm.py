"""Calls through LiteLLM (the benchmark and the judge) and the hygiene around them:
API keys come from the environment, are handed to LiteLLM only, and are scrubbed from
anything this package writes or prints.

LiteLLM is imported lazily (its import costs seconds) and offline-safe (it would try
to download a model cost map at import and retry with delays).
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.errors import ConfigError

# Environment variables whose values must never reach a file: the one named by the user
# plus anything that looks like a credential.
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
_MIN_SECRET_LEN = 8  # shorter values ("1", "none") would scrub ordinary words
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class Endpoint:
    """One model reachable through LiteLLM. `api_key_env` names the variable that holds
    its key (the key itself is never stored here)."""
    model: str                                  # a LiteLLM model name, e.g. "openai/default_model"
    api_base: str | None = None
    api_key_env: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # more completion() kwargs (extra_body, …)
    timeout_s: float = 120.0
    retries: int = 2          # transient failures only (connection, timeout, 429, 5xx)

    def api_key(self) -> str | None:
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ConfigError(None, "api_key_env", f"environment variable {self.api_key_env} is not set")
            return value
        # a local OpenAI-compatible server needs no key, but the OpenAI client insists on one
        if self.api_base and not os.environ.get("OPENAI_API_KEY"):
            return "none"
        return None  # LiteLLM reads the provider's usual variable itself

    def describe(self) -> dict[str, Any]:
        """What may be recorded about this endpoint: no key, no credentials in the URL."""
        return {"model": self.model, "api_base": public_url(self.api_base), "api_key_env": self.api_key_env}


def public_url(url: str | None) -> str | None:
    """The URL without user:password and without a query string (where keys hide)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def secret_values(extra_names: tuple[str, ...] = ()) -> list[str]:
    names = {n for n in os.environ if _SECRET_NAME.search(n)} | {n for n in extra_names if n}
    vals = {os.environ.get(n, "") for n in names}
    return sorted((v for v in vals if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def redact_obj(obj: Any, secrets: list[str]) -> Any:
    """Every string inside a JSON-like value, redacted."""
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {redact_obj(k, secrets): redact_obj(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, secrets) for v in obj]
    return obj


def _litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # its hints print request details
    return litellm


def litellm_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("litellm")
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str | None


class LLMError(RuntimeError):
    """A call that failed after LiteLLM's retries; the message is already redacted."""


def tool_calls_text(calls: Any) -> str:
    """Structured tool calls back into the `<tool_call>{json}</tool_call>` text the local
    model emits: servers (mlx_lm's among them, for Qwen templates) parse that text out of
    the content, and the tool_call scorer reads text."""
    out = []
    for call in calls or []:
        fn = getattr(call, "function", None) or (call.get("function") if isinstance(call, dict) else None)
        name = getattr(fn, "name", None) if not isinstance(fn, dict) else fn.get("name")
        args = getattr(fn, "arguments", None) if not isinstance(fn, dict) else fn.get("arguments")
        try:
            args = json.loads(args) if isinstance(args, str) else (args or {})
        except ValueError:
            pass  # keep the raw string: the scorer will call it a format error
        out.append("<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>")
    return "".join(out)


def _describe(exc: Exception, ep: Endpoint) -> str:
    """The provider's error without any key in it."""
    return redact(f"{type(exc).__name__}: {exc}", secret_values((ep.api_key_env or "",)))


def complete(ep: Endpoint, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             seed: int | None = None, top_p: float | None = None) -> Reply:
    litellm = _litellm()
    kwargs: dict[str, Any] = {"model": ep.model, "messages": messages, "max_tokens": max_tokens,
                              "temperature": temperature, "timeout": ep.timeout_s,
                              # a provider without `seed` (or top_p) ignores it instead of failing
                              "drop_params": True, **ep.extra}
    if ep.api_base:
        kwargs["api_base"] = ep.api_base
    key = ep.api_key()
    if key is not None:
        kwargs["api_key"] = key
    # Always sent, greedy or not: an mlx_lm server serves seeded requests one at a time,
    # and its batched path (unseeded, concurrent requests) segfaulted on Linux CPU here.
    if seed is not None:
        kwargs["seed"] = seed
    if top_p is not None and top_p < 1.0:
        kwargs["top_p"] = top_p
    # LiteLLM's own num_retries needs `tenacity`, which is not a dependency here
    ex = litellm.exceptions
    transient = (ex.APIConnectionError, ex.Timeout, ex.RateLimitError, ex.ServiceUnavailableError,
                 ex.InternalServerError, ex.BadGatewayError)
    for attempt in range(ep.retries + 1):
        t0 = time.perf_counter()
        try:
            resp = litellm.completion(**kwargs)
            break
        except transient as exc:
            if attempt == ep.retries:
                raise LLMError(_describe(exc, ep)) from None
            time.sleep(0.5 * 2 ** attempt)
        except Exception as exc:  # auth, bad request, unknown model: retrying cannot help
            raise LLMError(_describe(exc, ep)) from None
    latency = time.perf_counter() - t0
    choice = resp.choices[0]
    text = (choice.message.content or "") + tool_calls_text(getattr(choice.message, "tool_calls", None))
    usage = getattr(resp, "usage", None)
    return Reply(text, int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0),
                 latency, getattr(choice, "finish_reason", None))
