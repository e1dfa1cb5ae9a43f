"""How often does `mlx_lm server` answer an eval prompt as the eval recorded? (the
served-model probe's comparison rule, study/probe.py)

For every generation case of an eval_results.json, asks a real `mlx_lm server` (same
model and adapter) at temperature 0 for k tokens and counts the replies that are a prefix
of the recorded output: exactly, and with whitespace normalised (study.probe.answers_match).

    python benchmarks/probe_agreement.py --model M [--adapter A] --eval A/eval_results.json [--tokens 8 16]

Without --eval it runs the eval first (the demo model: ~20 s).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--eval", type=Path)
    ap.add_argument("--tokens", type=int, nargs="+", default=[8, 16])
    args = ap.parse_args()
    from netutil import free_port, health
    from study.probe import Probe, answers_match
    if args.eval and args.eval.exists():
        from evaluation import read_eval_results
        ev = read_eval_results(args.eval)
    else:
        from evaluation import EvalConfig, run_eval
        ev = run_eval(EvalConfig(model=args.model, adapter=args.adapter, council_path=str(ROOT / "council.yaml")),
                      progress=False)
    gen = [c for c in ev["cases"] if c.get("method") == "generate"]
    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", args.model, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv + (["--adapter-path", args.adapter] if args.adapter else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        while not health(port):
            time.sleep(0.3)
        probe = Probe(f"http://127.0.0.1:{port}", ROOT / "council.yaml")
        for k in args.tokens:
            exact = normalised = 0
            t0 = time.perf_counter()
            for c in gen:
                got = probe.ask(probe.messages(c["id"]), k)
                exact += c["output"].startswith(got)
                normalised += answers_match(c["output"], got)
            ms = (time.perf_counter() - t0) / len(gen) * 1000
            print(json.dumps({"adapter": args.adapter, "tokens": k, "cases": len(gen), "exact_prefix": exact,
                              "normalised_prefix": normalised, "ms_per_prompt": round(ms)}))
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
