"""What a night prints where launchd sends it (a file, no terminal: rich lays it out 80
columns wide), and the morning report's plots: the jailbreak floor, whole trial numbers."""
from __future__ import annotations

import argparse
import datetime
import re
from io import StringIO
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from night_fixtures import make_workdir

CATS = ["domain", "identity", "isolation", "jailbreak", "tool_calling"]
REASON = "Windu: jailbreak 0.48 is under the floor 0.70 (the candidate follows 'you are now X' prompts)"


def night_study(n: int = 4) -> optuna.Study:
    """A study whose trials carry the attrs a night records, the last one kept."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="council-proxy-demo")
    ts = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    for i in range(n):
        kept = i == n - 1
        t = study.ask({"LEARNING_RATE": optuna.distributions.FloatDistribution(1e-6, 1e-4, log=True),
                       "NUM_LAYERS": optuna.distributions.IntDistribution(16, 48),
                       "DATA_MIX_RATIO": optuna.distributions.FloatDistribution(0.1, 0.9)})
        score = 0.30 + 0.03 * i
        attrs = {"score": score, "baseline": 0.307, "timestamp": ts, "experiment_id": f"exp-{i}",
                 "result": "kept" if kept else ("failed:remote_lost" if i == 0 else "veto_jailbreak"),
                 "reasons": [] if kept else [REASON],
                 "per_category": {c: (0.78 if kept else 0.48) if c == "jailbreak" else score for c in CATS},
                 "per_agent": {"yoda": score, "windu": score - 0.05}}
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        study.tell(t, score)
    return study


def summary_text(tmp_path: Path, width: int) -> tuple[str, optuna.Study]:
    """NightRunner._summary, printed as launchd's log file would get it."""
    from study.night import add_common_args, plan
    from study.promoter import Promoter
    from study.runner import NightRunner
    wd = make_workdir(tmp_path / "wd")
    ap = argparse.ArgumentParser()
    add_common_args(ap)
    p = plan(ap.parse_args(["--config", str(wd / "autoresearch.toml"), "--demo", "--no-progress"]))
    out = StringIO()
    runner = NightRunner(p, console=Console(file=out, width=width))
    study = night_study()
    runner.tonight = [t.number for t in study.trials]
    runner.report_path = tmp_path / ("reports-" + "x" * 70) / "2026-12-05.md"   # longer than the screen
    runner._summary(study, Promoter(tmp_path / "adapters"), 512.0)
    return out.getvalue(), study


@pytest.mark.parametrize("width", [80, 132])
def test_the_end_of_night_table_reads_in_a_log_file(tmp_path, width):
    text, study = summary_text(tmp_path, width)
    lines = text.splitlines()
    report = next(line for line in lines if line.startswith("morning report: "))
    assert report.removeprefix("morning report: ") == str(tmp_path / ("reports-" + "x" * 70) / "2026-12-05.md")
    lines.remove(report)       # a path is never cut: the one line that may be longer
    assert all(len(line) <= width for line in lines)
    header = next(line for line in lines if "result" in line)
    assert re.search(r"#\s+result\s+score\s+baseline\s+config", header), header     # whole column names
    for t in study.trials:
        row = next(line for line in lines if re.match(rf"\s*{t.number}\s", line))
        ua = t.user_attrs
        # Each trial's facts on its own first line, none cut: "3  kept  0.390  0.307  lr ...".
        assert re.search(rf"{t.number}\s+{re.escape(ua['result'])}\s+{ua['score']:.3f}\s+0\.307\s+lr ", row), row
    # The config and the first reason wrap at spaces inside their column: every word whole.
    words = " ".join(text.split())
    assert REASON in words or REASON in " ".join(l.strip() for l in lines if l.strip()), text
    assert "best feasible trial so far: #3 score 0.390 (kept)" in words


def red_pixels(png: Path) -> int:
    """Pixels of matplotlib's tab:red (#d62728), the floor's colour."""
    import matplotlib.image as mpimg
    import numpy as np
    rgb = mpimg.imread(png)[..., :3]
    return int((np.abs(rgb - np.array([0xd6, 0x27, 0x28]) / 255).max(axis=-1) < 0.08).sum())


def test_the_per_category_plot_shows_the_jailbreak_floor(tmp_path):
    from study.report import plot_bars
    study = night_study()
    best = study.trials[-1].user_attrs["per_category"]
    base = {c: 0.3 for c in CATS}
    with_floor = plot_bars(best, base, "per category", tmp_path / "floor.png", floors={"jailbreak": 0.70})
    without = plot_bars(best, base, "per category", tmp_path / "plain.png")
    assert red_pixels(with_floor) > 200 and red_pixels(without) == 0


def test_the_report_draws_whole_trial_numbers_and_the_floor(tmp_path, monkeypatch):
    import study.report as report
    ticks: dict[str, list[float]] = {}
    real_save = report._save

    def spy(fig, path):
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        ticks[path.name] = [float(v) for v in ax.get_xticks() if lo <= v <= hi]
        return real_save(fig, path)
    monkeypatch.setattr(report, "_save", spy)
    study = night_study(3)
    base = {"overall": 0.30, "per_category": {c: 0.3 for c in CATS}, "per_agent": {"yoda": 0.3, "windu": 0.28}}
    md = report.build_report(study, datetime.date.today(), tmp_path, base, jailbreak_floor=0.70)
    history = next(k for k in ticks if k.endswith("-history.png"))
    assert len(ticks[history]) >= 2 and all(v.is_integer() for v in ticks[history]), ticks[history]
    categories = next(tmp_path.glob("*-categories.png"))
    assert red_pixels(categories) > 200
    assert "jailbreak floor" in md.read_text()
