"""Overhead per trial: where a demo night's time goes outside training and evaluation, and
how it grows with the study's history.

    nice -n 5 .venv/bin/python benchmarks/trial_overhead.py [--revert COMMIT] [--history 500]
        [--trials 2] [--budget-s 8] [--workdir DIR]

Needs pyinstrument in the venv (`.venv/bin/pip install pyinstrument`; a measuring tool,
not a dependency of the project).

1. Exports at history N (in this process, this tree's code): a synthetic SQLite study of N
   finished trials, each a copy of a real demo trial's params, user and system attrs
   (~3 kB of attrs: per-category and per-agent scores, the bootstrap stats, reasons), and a
   vault of N entries. Timed, alternating, median of 5: what the night did after every
   trial before (export_results: every trial of every study read back, the file rewritten)
   and now (export_trial: that trial's row merged into the file's rows, written
   atomically), and Vault.write (retention 500).
2. Profiled nights: a demo night of --trials trials (tiny budget) run in a child process by
   study.runner.NightRunner under pyinstrument, once on a fresh study and once on a study
   already holding --history trials (and as many vault entries), each with the code of
   "before" (a git worktree of HEAD with --revert's commit undone and the night's
   after-trial call back to export_results) and of this working tree. Every sampled second is attributed to one phase (training and the trial's eval
   apart); the per-trial overhead is what the trials spent outside training and eval.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from benchmarks import demo_night  # noqa: E402  (stdlib only at import: safe before --code)

# (function, file ending, label, descend): the first match on the way down names the phase;
# a container (descend=True) is timed whole and its unmatched rest gets "<label>: rest".
PHASES = [
    ("run_training", "train_core/child.py", "training (child: load, loop, validation, save)", False),
    ("_canary", "study/runner.py", "night: eval canary", False),
    ("ensure_base_eval", "study/runner.py", "night: base model eval", False),
    ("_model_and_sessions", "study/runner.py", "night: demo model check", False),
    ("_check_contamination", "study/runner.py", "night: contamination check", False),
    ("build_report", "study/report.py", "night: morning report", False),
    ("enable", "common/fastblas.py", "night: BLAS setup", False),
    ("objective", "objective.py", "trial: objective", True),
    ("run_eval", "evaluation/harness.py", "eval (trial)", False),
    ("prepare", "study/runner.py", "trial: data", False),
    ("suggest", "study/runner.py", "trial: suggest (sampler)", False),
    ("on_verdict", "study/runner.py", "trial: verdict, promotion", False),
    ("on_finish", "study/runner.py", "trial: artifacts upload", False),
    ("judge", "study/gate.py", "trial: gate", False),
    ("write_eval_results", "evaluation/results.py", "trial: eval_results.json", False),
    ("after_trial", "study/runner.py", "trial: after", True),
    ("export_results", "study/results.py", "trial: results.tsv", False),
    ("export_trial", "study/results.py", "trial: results.tsv", False),
    ("_vault_entry", "study/runner.py", "trial: vault", False),
    ("sync_current", "study/follow.py", "trial: serving adapter sync", False),
    ("_print_trial", "study/runner.py", "trial: console", False),
    ("reserve_slot", "study/workers.py", "trial: slot", False),
    ("run_slot", "study/workers.py", "trial: optuna ask/tell", True),
    ("paused", "study/serving.py", "serving stop/start", False),
    ("start", "study/serving.py", "serving stop/start", False),
]
FIX_COMMIT = "969b129"   # export_trial and the vault's date-line read
PROJECT_PACKAGES = ("study", "objective", "evaluation", "corpus", "train_core", "common", "demo")


def phase_times(root) -> dict[str, float]:
    out: dict[str, float] = {}

    def walk(frame, container: str | None) -> float:
        matched = 0.0
        for child in frame.children:
            hit = next((p for p in PHASES if child.function == p[0] and (child.file_path or "").endswith(p[1])), None)
            if hit and (hit[2] != "eval (trial)" or container == "trial: objective"):
                label = hit[2]
                if container is None and not hit[3] and label.startswith(("trial:", "serving")):
                    label = "night: " + label.split(": ", 1)[-1]     # e.g. the night's first corpus
                out[label] = out.get(label, 0.0) + child.time
                matched += child.time
                if hit[3]:
                    inner = walk(child, hit[2])
                    out[f"{hit[2]}: rest"] = out.get(f"{hit[2]}: rest", 0.0) + child.time - inner
            else:
                matched += walk(child, container)
        return matched
    walk(root, None)
    out["total"] = root.time
    return out


# -- one profiled night (in a child process, with --code's project on sys.path) -------------

def profiled_night(wd: Path, trials: int) -> dict:
    from pyinstrument import Profiler
    from common.fastblas import enable
    enable()
    p = demo_night.demo_plan(wd, trials)
    prof = Profiler(interval=0.005)
    t0 = time.time()
    prof.start()
    try:
        demo_night.run_night(p, wd / "night.log")
    finally:
        prof.stop()
    wall = time.time() - t0
    phases = phase_times(prof.last_session.root_frame())
    (wd / "profile.txt").write_text(prof.output_text(unicode=False, color=False, show_all=False))
    return {"wall_s": round(wall, 2), "trials": trials, "phases": {k: round(v, 3) for k, v in phases.items()}}


def setup_workdir(wd: Path, budget_s: float, base: Path) -> Path:
    demo_night.make_workdir(wd, {"budget_s = 240\n": f"budget_s = {budget_s:g}\n"})
    demo_night.copy_base_eval(wd, base)
    return wd


# -- synthetic history ------------------------------------------------------------------------

def clone_history(template_db: Path, study_name: str, target_db: Path, n: int, vault_root: Path | None) -> None:
    """n finished copies of the template study's first finished trial (params, attrs), new
    ids and timestamps one night apart, appended to target_db's study (created if needed)."""
    import optuna
    from datetime import datetime, timedelta
    from optuna.trial import FrozenTrial, TrialState
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    src = optuna.load_study(study_name=study_name, storage=f"sqlite:///{template_db}")
    t = next(x for x in src.get_trials(deepcopy=False) if x.state == TrialState.COMPLETE)
    dst = optuna.create_study(study_name=study_name, storage=f"sqlite:///{target_db}", direction="maximize",
                              load_if_exists=True)
    start = datetime(2024, 1, 1, 2, 0)
    system = {k: v for k, v in t.system_attrs.items() if not k.startswith("artifacts:")}
    clones = []
    for i in range(n):
        when = start + timedelta(days=i // 4, minutes=20 * (i % 4))
        ua = {**t.user_attrs, "experiment_id": f"exp-{when:%Y%m%d}-proxy-{i:03d}",
              "timestamp": when.isoformat(timespec="seconds"), "night": f"{when:%Y-%m-%d}-hist"}
        clones.append(FrozenTrial(number=0, state=TrialState.COMPLETE, value=t.value, datetime_start=when,
                                  datetime_complete=when + timedelta(minutes=18), params=dict(t.params),
                                  distributions=dict(t.distributions), user_attrs=ua, system_attrs=system,
                                  intermediate_values=dict(t.intermediate_values), trial_id=0))
    dst.add_trials(clones)
    from study.results import export_results
    export_results([dst], target_db.parent / "results.tsv")   # a real night finds its file there
    if vault_root is not None:
        from study.runner import NightRunner  # noqa: F401  (same imports as a night)
        from study.vault import VaultEntry, render, Vault
        v = Vault(vault_root)
        for c in clones:
            ua = c.user_attrs
            e = VaultEntry(id=ua["experiment_id"], date=datetime.fromisoformat(ua["timestamp"]), mode="proxy",
                           model="demo", score=ua.get("score"), baseline=ua.get("baseline"), result=ua["result"],
                           reasons=list(ua.get("reasons", [])), params=dict(c.params),
                           per_category_delta=dict(ua.get("delta_per_category") or {}),
                           extra={"study": study_name, "stats": ua.get("stats")})
            path = v.path_for(e)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(e))


def export_timings(template_db: Path, study_name: str, sizes: list[int], work: Path, repeat: int = 5) -> list[dict]:
    """Per-trial results.tsv work at each history size: whole export vs one-trial merge, and
    a vault write; alternated, median of `repeat`."""
    import optuna
    from datetime import datetime
    from study.results import export_results, export_trial
    from study.vault import Vault, VaultEntry
    rows = []
    for n in sizes:
        (work / f"hist-{n}").mkdir(parents=True, exist_ok=True)
        db = work / f"hist-{n}" / "autoresearch.db"
        vault = work / f"vault-{n}"
        clone_history(template_db, study_name, db, n + 1, vault)   # + the trial just finished
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        out = work / f"hist-{n}" / "results.tsv"
        whole, one, vw = [], [], []

        def studies():
            return (optuna.load_study(study_name=s, storage=storage) for s in optuna.get_all_study_names(storage))
        study = optuna.load_study(study_name=study_name, storage=storage)
        last = study.get_trials(deepcopy=False)[-1]
        for k in range(repeat):
            t0 = time.perf_counter()
            export_results(studies(), out)
            whole.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            export_trial(studies(), study, last, out)
            one.append(time.perf_counter() - t0)
            entry = VaultEntry(id=f"exp-29990101-proxy-{k:03d}", date=datetime(2999, 1, 1, 2, k), mode="proxy",
                               model="demo", score=0.5, baseline=0.5, result="discard", reasons=["r"],
                               params=dict(last.params), per_category_delta={})
            t0 = time.perf_counter()
            Vault(vault, retention=500).write(entry)
            vw.append(time.perf_counter() - t0)
        # Retention's sort keys, the way it read them before (whole front matter) and now.
        from study.vault import _entry_date, read_front_matter
        entries = Vault(vault).entries()
        yaml_s, line_s = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            [read_front_matter(e).get("date") for e in entries]
            yaml_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            [_entry_date(e) for e in entries]
            line_s.append(time.perf_counter() - t0)
        rows.append({"history": n, "export_results_s": round(statistics.median(whole), 4),
                     "export_trial_s": round(statistics.median(one), 4),
                     "vault_write_s": round(statistics.median(vw), 4),
                     "vault_dates_yaml_s": round(statistics.median(yaml_s), 4),
                     "vault_dates_line_s": round(statistics.median(line_s), 4), "vault_entries": len(entries),
                     "file_kb": round(out.stat().st_size / 1024, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# -- the driver ---------------------------------------------------------------------------------

def make_before(dest: Path, revert: str) -> None:
    """A worktree of HEAD with `revert` undone and the night's after-trial export back to the
    whole-file export_results (the call that came with it, in study/runner.py)."""
    git = ["git", "-C", str(dest)]
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), "HEAD"], check=True,
                   capture_output=True)
    subprocess.run(git + ["revert", "--no-commit", revert], check=True, capture_output=True)
    runner = dest / "study" / "runner.py"
    text = runner.read_text()
    call = "export_trial(self._studies_for_export(storage), study_, trial, "
    assert call in text, "study/runner.py's after-trial export changed: update make_before"
    runner.write_text(text.replace(call, "export_results(self._studies_for_export(storage), ")
                      .replace("from study.results import export_results, export_trial",
                               "from study.results import export_results"))


def child(args) -> int:
    """--child: one profiled night with --code's project; prints one JSON line."""
    sys.path.insert(0, str(args.code))
    for name in list(sys.modules):
        if name.split(".")[0] in PROJECT_PACKAGES:
            del sys.modules[name]
    res = profiled_night(args.workdir, args.trials)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def run_child(code: Path, wd: Path, trials: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", "--code", str(code), "--workdir", str(wd),
                          "--trials", str(trials)], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"profiled night in {wd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def per_trial(res: dict) -> dict[str, float]:
    ph, n = res["phases"], res["trials"]
    trial_keys = [k for k in ph if k.startswith(("trial:", "serving"))]
    inside = ph.get("trial: objective", 0.0) - ph.get("training (child: load, loop, validation, save)", 0.0) \
        - ph.get("eval (trial)", 0.0)
    outside = sum(ph.get(k, 0.0) for k in ("trial: after", "trial: slot", "trial: optuna ask/tell: rest"))
    detail = {k: round(ph[k] / n, 3) for k in trial_keys
              if k not in ("trial: objective", "trial: after", "trial: optuna ask/tell")}
    return {"overhead_per_trial_s": round((inside + outside) / n, 3), **detail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--revert", default=FIX_COMMIT,
                    help="commit undone in the 'before' copy of HEAD (default: %(default)s, the fixes measured here)")
    ap.add_argument("--history", type=int, default=500, help="trials already in the study (default: %(default)s)")
    ap.add_argument("--trials", type=int, default=2, help="trials per profiled night (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=8.0, help="training budget per trial (default: %(default)s)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp folder")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        ap.error("pyinstrument is not installed: .venv/bin/pip install pyinstrument")
    root = (args.workdir or Path(tempfile.mkdtemp(prefix="trial-overhead-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = root / "before-code"
    if not before.exists():
        make_before(before, args.revert)
    print(f"workdir {root}; before = HEAD with {args.revert} undone; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    try:
        from benchmarks.night_utilization import base_eval
        base = base_eval(ROOT / ".cache" / "night_utilization")
        study_name = "council-proxy-demo"
        done_file = root / "nights.json"   # a rerun on the same --workdir keeps the nights it has
        done = json.loads(done_file.read_text()) if done_file.exists() else {}
        results = {}
        template = root / "after-fresh" / "autoresearch.db"
        # Fresh study first (its first trial is the template of the synthetic history).
        for hist in (0, args.history):
            for label, code in (("before", before), ("after", ROOT)):
                key = f"{label}-{hist}"
                if key not in done:
                    wd = setup_workdir(root / f"{label}-{'fresh' if hist == 0 else 'history'}", args.budget_s, base)
                    if hist:
                        clone_history(template, study_name, wd / "autoresearch.db", hist, wd / "demo-vault")
                    done[key] = run_child(code, wd, args.trials)
                    done_file.write_text(json.dumps(done, indent=1))
                results[(label, hist)] = done[key]
                print(f"{label}, history {hist}: {json.dumps(per_trial(done[key]))}", flush=True)
        exports = export_timings(template, study_name, [0, 100, args.history], root / "exports")
        summary = {"nights": {f"{k[0]}-{k[1]}": {**v, "per_trial": per_trial(v)} for k, v in results.items()},
                   "exports": exports, "load_average": os.getloadavg()}
        (root / "trial_overhead.json").write_text(json.dumps(summary, indent=1))
        print(report(results, args.history, exports))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True)
    return 0


def report(results: dict, history: int, exports: list[dict]) -> str:
    keys = [("before", 0), ("after", 0), ("before", history), ("after", history)]
    pts = {k: per_trial(results[k]) for k in keys}
    names = sorted({n for p in pts.values() for n in p}, key=lambda n: (n != "overhead_per_trial_s", n))
    out = ["| per trial, s | " + " | ".join(f"{a}, history {h}" for a, h in keys) + " |", "|---" * 5 + "|"]
    out += [f"| {n} | " + " | ".join(f"{pts[k].get(n, 0.0):.3f}" for k in keys) + " |" for n in names]
    out += ["", "| history | results.tsv: export_results (before) s | export_trial (after) s | ratio | results.tsv kB "
                "| vault entries | retention's dates: YAML (before) s | date line (after) s | vault write (after) s |",
            "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {e['history']} | {e['export_results_s']:.4f} | {e['export_trial_s']:.4f} | "
            f"{e['export_results_s'] / max(e['export_trial_s'], 1e-9):.0f}x | {e['file_kb']} | {e['vault_entries']} | "
            f"{e['vault_dates_yaml_s']:.4f} | {e['vault_dates_line_s']:.4f} | {e['vault_write_s']:.4f} |"
            for e in exports]
    night_rows = sorted({n for k in keys for n in results[k]["phases"] if n.startswith("night:")})
    out += ["", "| night-level, s | " + " | ".join(f"{a}, history {h}" for a, h in keys) + " |", "|---" * 5 + "|"]
    out += [f"| {n} | " + " | ".join(f"{results[k]['phases'].get(n, 0.0):.2f}" for k in keys) + " |"
            for n in night_rows + ["total"]]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
