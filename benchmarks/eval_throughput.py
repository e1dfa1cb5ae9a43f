"""Eval throughput: cases per second, batched vs sequential, same model and cases.

    .venv/bin/python benchmarks/eval_throughput.py [--categories a,b] [--splits dev,holdout]
        [--batch-size 32] [--model DIR] [--out report.json]

The demo model (built and cached under --cache, or --model) is loaded once and warmed up
with a smoke run; then the same cases are evaluated twice through the same harness code:
batched (choice cases' log-likelihoods --batch-size sequences per forward, the choices of
a case sharing one prompt pass; replies generated --batch-size at a time by
mlx_lm.batch_generate) and sequential (--batch-size 1: one case per forward, one reply at
a time). Reported: cases/s of each, the speed-up (target >= 3x), each path's share, and
how far the two runs' per-case results agree (greedy outputs of batched and sequential
generation are not always bit-identical; log-likelihoods agree to float rounding).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

TARGET = 3.0


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder (default: the demo model, built and cached)")
    ap.add_argument("--cache", default=str(ROOT / ".cache"))
    ap.add_argument("--council", default=str(ROOT / "council.yaml"))
    ap.add_argument("--pretrain-s", type=float, default=100.0, help="demo pre-training (autoresearch.toml's)")
    ap.add_argument("--categories", type=_csv, default=None)
    ap.add_argument("--splits", type=_csv, default=("dev", "holdout"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", help="also write the report as JSON here")
    return ap.parse_args(argv)


def _by_method(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per scoring path: cases and the seconds attributed to them (latency shares)."""
    out: dict[str, dict[str, float]] = {}
    for c in results["cases"]:
        m = out.setdefault(c["method"], {"cases": 0, "seconds": 0.0})
        m["cases"] += 1
        m["seconds"] += c["latency_ms"] / 1000
    for m in out.values():
        m["seconds"] = round(m["seconds"], 2)
        m["cases_per_s"] = round(m["cases"] / m["seconds"], 2) if m["seconds"] else None
    return out


def agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    A = {c["id"]: c for c in a["cases"]}
    B = {c["id"]: c for c in b["cases"]}
    gen = [i for i in A if A[i]["method"] != "loglik"]
    lik = [i for i in A if A[i]["method"] == "loglik"]
    return {"generated_outputs_equal": f"{sum(A[i]['output'] == B[i]['output'] for i in gen)}/{len(gen)}",
            "loglik_max_abs_score_diff": max((abs(A[i]["score"] - B[i]["score"]) for i in lik), default=0.0),
            "overall": {"batched": a["overall"], "sequential": b["overall"]}}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from common.fastblas import enable as enable_fast_blas
    fast_blas = enable_fast_blas()  # before mlx's first matrix product, as the CLI does
    from evaluation.harness import EvalConfig, load_model, run_eval

    model = args.model
    if not model:
        from demo import ensure_demo
        model = str(ensure_demo(Path(args.cache), Path(args.council), pretrain_seconds=args.pretrain_s,
                                progress=False).model_dir)
    base = EvalConfig(model=model, council_path=args.council, categories=args.categories, splits=args.splits,
                      max_tokens=args.max_tokens)
    pair = load_model(base)
    run_eval(EvalConfig(**{**base.__dict__, "smoke": True}), progress=False, loaded=pair)  # warm-up
    runs = {}
    for name, bs in (("batched", args.batch_size), ("sequential", 1)):
        t0 = time.perf_counter()
        res = run_eval(EvalConfig(**{**base.__dict__, "batch_size": bs}), progress=False, loaded=pair)
        runs[name] = (res, time.perf_counter() - t0)
    (b, tb), (s, ts) = runs["batched"], runs["sequential"]
    n = b["n_cases"]
    return {"cases": n, "batch_size": args.batch_size, "max_tokens": args.max_tokens,
            "batched": {"seconds": round(tb, 2), "cases_per_s": round(n / tb, 2), "by_method": _by_method(b)},
            "sequential": {"seconds": round(ts, 2), "cases_per_s": round(n / ts, 2), "by_method": _by_method(s)},
            "speedup": round(ts / tb, 2), "target": TARGET, "agreement": agreement(b, s),
            "machine": f"{platform.machine()} {platform.system()}, fast BLAS {'on' if fast_blas else 'off'}",
            "date": time.strftime("%Y-%m-%d")}


def render(r: dict[str, Any]) -> str:
    lines = [f"{r['cases']} cases, max_tokens {r['max_tokens']}, {r['machine']}, {r['date']}",
             "| run | seconds | cases/s | loglik cases/s | generate cases/s |", "|---|---|---|---|---|"]
    for name in ("batched", "sequential"):
        m = r[name]["by_method"]
        lines.append(f"| {name}{' (batch ' + str(r['batch_size']) + ')' if name == 'batched' else ' (batch 1)'} "
                     f"| {r[name]['seconds']} | {r[name]['cases_per_s']} "
                     f"| {m.get('loglik', {}).get('cases_per_s', '-')} "
                     f"| {m.get('generate', {}).get('cases_per_s', '-')} |")
    ok = "meets" if r["speedup"] >= r["target"] else "MISSES"
    lines.append(f"speed-up {r['speedup']}x ({ok} the {r['target']}x target); agreement: {json.dumps(r['agreement'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = measure(args)
    print(render(report))
    if args.out:
        from common.atomic import atomic_write_json
        atomic_write_json(args.out, report)
    return 0 if report["speedup"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
