"""Corpus throughput: examples per second for the whole pipeline (read, clean, scrub,
deduplicate, balance, split, mix, write) on generated session logs.

    .venv/bin/python benchmarks/corpus_throughput.py [--n 100000] [--dup 0.3] [--repeat 1]

The logs: `n` conversations spread over the seven agents and five categories, half
`real` and half `synthetic`, each a 16-word user turn and a 30-word answer drawn from a
2,000-word vocabulary; `dup` of them duplicate another (a fifth verbatim, the rest one
small edit away: a filler word, a word swapped, dropped or re-cased);
a few carry PII or <think> blocks, or are malformed. The council's template
examples are added by the pipeline as in a night. Target: 100,000 examples in < 60 s.
`noisy_logs` is also what tests/test_corpus_quality.py builds its v2 corpus with.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from common.council import CATEGORIES, Council, load_council  # noqa: E402

_SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "dor", "ni", "qua", "bel", "tor",
              "ex", "im", "pha", "zu", "gar", "lin", "or", "wes"]
FILLERS = ["so", "well", "please", "okay", "hey", "now"]
PII = ["mail me at jo.smith@example.com", "my phone is +44 20 7946 0958",
       "the host is 192.168.10.24", "token sk-abcdEFGH1234ijklMNOP5678qrst"]


@dataclass(frozen=True)
class LogSpec:
    n: int = 100_000
    dup: float = 0.3             # share of examples that are duplicates of another...
    exact: float = 0.2           # ...of which this share verbatim, the rest one edit away
    synthetic: float = 0.5       # share marked "source": "synthetic"
    pii: float = 0.01
    think: float = 0.02
    malformed: float = 0.001
    user_words: int = 16
    answer_words: int = 30
    vocab: int = 2000
    seed: int = 0


def _vocab(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def _edit(words: list[str], rng: random.Random, vocab: list[str]) -> list[str]:
    """One small edit (never to word 0, the family tag)."""
    out = list(words)
    kind = rng.randrange(4)
    i = rng.randrange(1, len(out))
    if kind == 0:
        out.insert(1, rng.choice(FILLERS))
    elif kind == 1:
        out[i] = rng.choice(vocab)
    elif kind == 2 and len(out) > 3:
        del out[i]
    else:
        out[i] = out[i].capitalize() + "!"
    return out


def noisy_logs(council: Council, spec: LogSpec) -> dict[str, list[str]]:
    """{agent: JSONL lines}. Example k's user turn starts with its family tag `fam<k>`:
    a near-duplicate carries its original's tag, so a test can tell families apart."""
    rng = random.Random(f"noisy-logs-{spec.seed}")
    vocab = _vocab(spec.vocab, rng)
    n_orig = max(1, round(spec.n * (1 - spec.dup)))
    rows: list[dict] = []
    for k in range(n_orig):
        agent = council.agents[k % len(council.agents)]
        rows.append({"agent": agent.name, "category": CATEGORIES[(k // 7) % len(CATEGORIES)],
                     "source": "synthetic" if rng.random() < spec.synthetic else "real",
                     "user": [f"fam{k}"] + rng.choices(vocab, k=spec.user_words - 1),
                     "answer": rng.choices(vocab, k=spec.answer_words)})
    for _ in range(spec.n - n_orig):
        base = rows[rng.randrange(n_orig)]
        if rng.random() < spec.exact:
            rows.append(dict(base))
        elif rng.random() < 0.5:
            rows.append({**base, "user": _edit(base["user"], rng, vocab)})
        else:
            rows.append({**base, "answer": _edit(["_"] + base["answer"], rng, vocab)[1:]})
    rng.shuffle(rows)
    out: dict[str, list[str]] = {a.name: [] for a in council.agents}
    systems = {a.name: a.system_prompt for a in council.agents}
    for r in rows:
        out[r["agent"]].append(_line(r, systems[r["agent"]], spec, rng))
    return out


def _line(r: dict, system: str, spec: LogSpec, rng: random.Random) -> str:
    if rng.random() < spec.malformed:
        return '{"messages": [{"role": "user", "content": "cut off'
    user, answer = " ".join(r["user"]) + "?", " ".join(r["answer"]) + "."
    if rng.random() < spec.pii:
        user += " " + rng.choice(PII)
    if rng.random() < spec.think:
        answer = "<think>let me think about " + user[:40] + "</think>" + answer
    return json.dumps({"messages": [{"role": "system", "content": system},
                                    {"role": "user", "content": user},
                                    {"role": "assistant", "content": answer}],
                       "agent": r["agent"], "category": r["category"], "source": r["source"]})


def write_logs(council: Council, out_dir: Path, spec: LogSpec) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for agent, lines in noisy_logs(council, spec).items():
        (out_dir / f"{agent}.jsonl").write_text("\n".join(lines) + "\n")
    return out_dir


def _peak_rss_mb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10))


def run(spec: LogSpec, council_path: Path, repeat: int = 1) -> dict:
    from corpus import prepare

    council = load_council(council_path)
    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        t0 = time.perf_counter()
        sessions = write_logs(council, Path(tmp) / "sessions", spec)
        gen_s = time.perf_counter() - t0
        times, cpu, data = [], [], None
        for i in range(repeat):  # a fresh out_root each time: no cache hit
            t0, c0 = time.perf_counter(), time.process_time()
            data = prepare(sessions, council_path, Path(tmp) / f"data{i}", mix_ratio=0.5)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        t0 = time.perf_counter()
        prepare(sessions, council_path, Path(tmp) / "data0", mix_ratio=0.5)
        cached_s = time.perf_counter() - t0
    m = data.manifest
    total = m["raw"]["real"] + m["raw"]["synthetic"]
    best = min(times)
    return {"examples_in": total, "generated_logs": spec.n, "seconds": round(best, 2),
            "all_seconds": [round(t, 2) for t in times],
            # CPU seconds of this process: what the wall time would be on idle cores
            "cpu_seconds": [round(t, 2) for t in cpu],
            "peak_rss_mb": _peak_rss_mb(),
            "examples_per_s": round(total / best), "cache_hit_s": round(cached_s, 3),
            "generate_s": round(gen_s, 2), "duplicate_rate": m["duplicates"]["rate"],
            "near": m["duplicates"]["near"], "exact": m["duplicates"]["exact"],
            "scrubbed": m["cleaning"]["scrubbed"], "dropped": m["cleaning"]["dropped"],
            "malformed": sum(m["malformed"]["by_reason"].values()), "counts": m["counts"],
            "target_met": best < 60.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dup", type=float, default=0.3)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--council", type=Path, default=ROOT / "council.yaml")
    a = p.parse_args(argv)
    result = run(LogSpec(n=a.n, dup=a.dup), a.council, a.repeat)
    print(json.dumps(result, indent=2))
    print(f"{result['examples_in']} examples in {result['seconds']} s = "
          f"{result['examples_per_s']} examples/s (target < 60 s: "
          f"{'met' if result['target_met'] else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
