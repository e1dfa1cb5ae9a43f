"""The morning report: reports/<date>.md with PNG plots; `python -m study.report [--date]`."""
from __future__ import annotations

import argparse
import sys
from datetime import date, datetime
from pathlib import Path

from common.atomic import atomic_write_text
from common.errors import ConfigError, one_line

MIN_TRIALS_FOR_IMPORTANCE = 5


def _trials_of_night(study, night: date):
    out = []
    for t in study.get_trials(deepcopy=False):
        ts = t.user_attrs.get("timestamp")
        when = datetime.fromisoformat(ts).date() if ts else (t.datetime_start.date() if t.datetime_start else None)
        if when == night:
            out.append(t)
    return out


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_history(study, baseline: float | None, path: Path) -> Path:
    import optuna.visualization.matplotlib as ovm
    ax = ovm.plot_optimization_history(study)
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", linestyle="--", label=f"baseline {baseline:.3f}")
        ax.legend(loc="lower right")
    ax.set_title(f"{study.study_name}: Council score per trial")
    _whole_numbers(ax.xaxis)
    return _save(ax.figure, path)


def _whole_numbers(axis) -> None:
    """Trial numbers are whole: no tick at trial 2.5."""
    from matplotlib.ticker import MaxNLocator
    axis.set_major_locator(MaxNLocator(integer=True))


def plot_importances(study, path: Path) -> Path | None:
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    ax = ovm.plot_param_importances(study)
    return _save(ax.figure, path)


def plot_bars(cand: dict[str, float], base: dict[str, float], title: str, path: Path,
              floors: dict[str, float] | None = None) -> Path:
    """Baseline and best candidate side by side; `floors` (e.g. {"jailbreak": 0.70}) draws
    each key's veto floor across its pair of bars, so a bar under it reads as vetoed."""
    import matplotlib.pyplot as plt
    import numpy as np
    keys = sorted(set(cand) | set(base))
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(keys) + 2), 3.6))
    ax.bar(x - 0.2, [base.get(k, 0) for k in keys], 0.4, label="baseline", color="tab:gray")
    ax.bar(x + 0.2, [cand.get(k, 0) for k in keys], 0.4, label="best candidate", color="tab:blue")
    ax.set_xticks(x, keys, rotation=20)
    for key, floor in (floors or {}).items():
        if key in keys:
            i = keys.index(key)
            ax.hlines(floor, i - 0.45, i + 0.45, colors="tab:red", linestyles="--", linewidth=2,
                      label=f"{key} floor {floor:.2f}")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def build_report(study, night: date, reports_dir: Path, baseline_eval: dict | None,
                 jailbreak_floor: float | None = None) -> Path:
    """Write reports/<night>.md and its PNGs; returns the markdown path."""
    import matplotlib
    matplotlib.use("Agg")
    reports_dir = Path(reports_dir)
    stem = night.isoformat()
    trials = _trials_of_night(study, night)
    scored = [t for t in trials if t.user_attrs.get("score") is not None]
    best = max(scored, key=lambda t: t.user_attrs["score"], default=None)
    base_score = baseline_eval.get("overall") if baseline_eval else None
    lines = [f"# council-autoresearch — night of {stem}", "",
             f"Study `{study.study_name}`: {len(trials)} trial(s) tonight, {len(study.trials)} in all.", ""]
    images: list[tuple[str, Path]] = []
    if any(t.value is not None for t in study.trials):
        images.append(("Optimisation history (dashed: baseline)",
                       plot_history(study, base_score, reports_dir / f"{stem}-history.png")))
    imp = plot_importances(study, reports_dir / f"{stem}-importances.png")
    if imp:
        images.append(("Parameter importances", imp))
    if best is not None and baseline_eval:
        images.append(("Per category: best candidate vs baseline (red dashes: the jailbreak floor)",
                       plot_bars(best.user_attrs.get("per_category", {}), baseline_eval.get("per_category", {}),
                                 "per category", reports_dir / f"{stem}-categories.png",
                                 floors={"jailbreak": jailbreak_floor} if jailbreak_floor is not None else None)))
        images.append(("Per agent: best candidate vs baseline",
                       plot_bars(best.user_attrs.get("per_agent", {}), baseline_eval.get("per_agent", {}),
                                 "per agent", reports_dir / f"{stem}-agents.png")))
    lines += ["| trial | result | score | baseline | reasons |", "|---|---|---|---|---|"]
    for t in trials:
        ua = t.user_attrs
        score = f"{ua['score']:.3f}" if ua.get("score") is not None else "–"
        base = f"{ua['baseline']:.3f}" if ua.get("baseline") is not None else "–"
        reasons = "; ".join(ua.get("reasons", [])).replace("|", "/")
        lines.append(f"| {ua.get('experiment_id', t.number)} | {ua.get('result', t.state.name.lower())} | {score} | {base} | {reasons} |")
    lines.append("")
    from study.proposer import report_lines
    lines += report_lines(trials)   # the proposer's hypotheses and what came of them
    if best is not None:
        lines += [f"Best tonight: **{best.user_attrs.get('experiment_id')}** score {best.user_attrs['score']:.3f} "
                  f"({best.user_attrs.get('result')}).", ""]
    from study.noise import report_lines as noise_lines
    lines += noise_lines(trials)    # how large a difference tonight could tell from noise
    for title, img in images:
        lines += [f"## {title}", "", f"![{title}]({img.name})", ""]
    return atomic_write_text(reports_dir / f"{stem}.md", "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m study.report",
                                 description="(Re)generate the morning report reports/<date>.md with its plots.")
    ap.add_argument("--config", default="autoresearch.toml")
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--date", default=None, help="YYYY-MM-DD (default: today)")
    ap.add_argument("--mode", choices=("proxy", "full"), default="proxy")
    args = ap.parse_args(argv)
    try:
        night = date.fromisoformat(args.date) if args.date else date.today()
    except ValueError:
        print(f"error: --date {args.date!r} is not YYYY-MM-DD", file=sys.stderr)
        return 2
    try:
        from study.night import plan
        ns = argparse.Namespace(config=args.config, demo=args.demo, dry_run=True, mode=args.mode, full=False,
                                skip_prepare=True, no_progress=True, deadline=None, max_trials=None)
        p = plan(ns)
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    import optuna
    from study.promoter import Promoter
    from study.storage import open_storage
    s = p.settings
    storage = open_storage(s.storage_url())
    try:
        study = optuna.load_study(study_name=p.study_name, storage=storage)
    except KeyError:
        print(f"error: no study {p.study_name!r} in {s.storage_url()}", file=sys.stderr)
        return 2
    baseline = None
    cur = Promoter(p.adapters_root).current()
    if cur and (cur / "eval_results.json").exists():
        from evaluation.results import read_eval_results
        baseline = read_eval_results(cur / "eval_results.json")
    path = build_report(study, night, s.path(s.paths.reports), baseline, jailbreak_floor=s.gate.jailbreak_floor)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
