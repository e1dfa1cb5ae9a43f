"""The served-model probe: after every start, does council-mlx answer as the eval recorded?

A health check proves the server is up, not which weights it serves (an mlx-lm release
once ignored --adapter-path silently). So a few of the eval's own generation prompts go to
/v1/chat/completions, greedy and short, and each reply must be a prefix of the output the
eval recorded for the adapter that should be served.

The rule was set by measurement on the demo model (see benchmarks/README.md "Served-model
probe"): at temperature 0, the server's reply to a prompt cut at k tokens was a prefix of
batch_generate's recorded output for every generation case; the server drops a leading
space, so whitespace is normalised before comparing. Cases whose recorded output differs
from the base model's come first: those are the ones that tell the adapter apart.
"""
from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

PROBE_CASES = 4
PROBE_TOKENS = 8


def normalise(text: str) -> str:
    # U+FFFD: a reply cut inside a multi-byte character decodes to it on one side only.
    return " ".join(text.replace("\ufffd", "").split())


def answers_match(recorded: str, served: str) -> bool:
    """The served reply (at most as many tokens as the eval generated) is the start of
    what the eval recorded; an empty reply matches only an empty record."""
    r, s = normalise(recorded), normalise(served)
    return r.startswith(s) if s else not r


def _generated(evaluated: dict) -> list[dict]:
    return [c for c in evaluated.get("cases") or []
            if c.get("method") == "generate" and isinstance(c.get("output"), str) and normalise(c["output"])]


def _probed_part(case: dict, tokens: int) -> int:
    """About how many characters of the recorded output a reply of `tokens` tokens covers."""
    done = int((case.get("tokens") or {}).get("completion") or 0)
    share = min(1.0, tokens / done) if done > 0 else 1.0
    return max(1, math.ceil(len(normalise(case["output"])) * share))


def pick_cases(evaluated: dict, n: int = PROBE_CASES, others: Iterable[dict] = (),
               tokens: int = PROBE_TOKENS) -> list[dict]:
    """n generation cases of `evaluated`, deterministically: first those whose output, as
    far as a `tokens`-token reply reaches, differs from every eval in `others` (the base
    model's), each output once, then by id."""
    other_out = [{c["id"]: normalise(c.get("output") or "") for c in ev.get("cases") or []} for ev in others]

    def telling(c: dict) -> bool:
        k = _probed_part(c, tokens)
        return all((o.get(c["id"]) or "")[:k] != normalise(c["output"])[:k] for o in other_out)
    ranked = sorted(_generated(evaluated), key=lambda c: (not telling(c), c["id"]))
    chosen, seen = [], set()
    for c in ranked:
        if normalise(c["output"]) not in seen:
            chosen.append(c)
            seen.add(normalise(c["output"]))
    chosen += [c for c in ranked if c not in chosen]
    return [{**c, "telling": telling(c) and bool(other_out)} for c in chosen[:n]]


@dataclass
class ProbeResult:
    adapter: str | None                  # the adapter that should answer (None: the base model)
    matched: int = 0
    total: int = 0
    telling: int = 0                     # probed cases whose record differs from the base model's
    cases: list[dict] = field(default_factory=list)   # {id, expected, got, match}
    error: str | None = None             # the server could not be asked
    skipped: str | None = None           # nothing to compare with

    @property
    def ok(self) -> bool:
        return self.skipped is not None or (self.error is None and self.total > 0 and self.matched == self.total)

    def line(self) -> str:
        who = self.adapter or "base model"
        if self.skipped:
            return f"probe {who}: skipped ({self.skipped})"
        if self.error:
            return f"probe {who}: FAILED, {self.error}"
        verdict = "answers as its eval recorded" if self.ok else "MISMATCH"
        bad = [c for c in self.cases if not c["match"]]
        detail = "; ".join(f"{c['id']}: expected {c['expected'][:40]!r}, got {c['got'][:40]!r}" for c in bad[:2])
        return (f"probe {who}: {self.matched}/{self.total} {verdict}"
                + (f" ({self.telling} of them differ from the base model)" if self.adapter else "")
                + (f"; {detail}" if detail else ""))

    def as_attr(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "cases"} | {
            "ok": self.ok, "cases": [{k: c[k] for k in ("id", "match")} for c in self.cases]}


class Probe:
    """Asks one OpenAI-compatible server (the project's own urllib, loopback)."""

    def __init__(self, base_url: str, council_path: Path, suite_dir: Path | None = None,
                 n: int = PROBE_CASES, max_tokens: int = PROBE_TOKENS, timeout_s: float = 60.0):
        self.base_url, self.council_path, self.suite_dir = base_url.rstrip("/"), Path(council_path), suite_dir
        self.n, self.max_tokens, self.timeout_s = n, max_tokens, timeout_s
        self._prompts: dict[str, list[dict]] | None = None

    def messages(self, case_id: str) -> list[dict] | None:
        """The messages the eval sent for this case (its system prompt and user turn)."""
        if self._prompts is None:
            from common.council import load_council
            from evaluation.rows import messages
            from evaluation.suite import DEFAULT_SUITE_DIR, load_suite
            council = load_council(self.council_path)
            cases = load_suite(self.suite_dir or DEFAULT_SUITE_DIR, council)
            self._prompts = {c.id: messages(council, c) for c in cases}
        return self._prompts.get(case_id)

    def ask(self, msgs: list[dict], max_tokens: int) -> str:
        # enable_thinking=False: what the eval's prompts render (evaluation.likelihood.CHAT_KWARGS).
        body = {"messages": msgs, "max_tokens": max_tokens, "temperature": 0.0,
                "chat_template_kwargs": {"enable_thinking": False}}
        req = urllib.request.Request(f"{self.base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as r:  # noqa: S310 (loopback)
            return json.loads(r.read())["choices"][0]["message"].get("content") or ""

    def __call__(self, adapter: str | None, evaluated: dict | None, others: Iterable[dict] = ()) -> ProbeResult:
        res = ProbeResult(adapter)
        if evaluated is None:
            res.skipped = "no eval_results.json recorded for it on this machine"
            return res
        chosen = pick_cases(evaluated, self.n, others, self.max_tokens)
        if not chosen:
            res.skipped = "its eval recorded no generated reply"
            return res
        for c in chosen:
            msgs = self.messages(c["id"])
            if msgs is None:
                continue
            recorded = int((c.get("tokens") or {}).get("completion") or self.max_tokens)
            try:
                got = self.ask(msgs, max(1, min(self.max_tokens, recorded)))
            except (OSError, ValueError, KeyError, IndexError) as exc:
                res.error = f"{type(exc).__name__}: {exc}"
                return res
            match = answers_match(c["output"], got)
            res.cases.append({"id": c["id"], "expected": c["output"], "got": got, "match": match})
            res.total += 1
            res.matched += match
            res.telling += bool(c.get("telling"))
        if not res.total:
            res.skipped = "the suite no longer has the cases its eval recorded"
        return res
