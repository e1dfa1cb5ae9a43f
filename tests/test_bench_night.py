"""The night benchmarks' own arithmetic and portability (benchmarks/demo_night.py,
benchmarks/night_utilization.py); the figures themselves are in benchmarks/README.md."""
from __future__ import annotations

import subprocess
import sys

from benchmarks.demo_night import rss_mb


def test_rss_without_proc_reads_ps(tmp_path):
    # macOS has no /proc: the reading must come from `ps`, not the lifetime peak.
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(30)"])
    try:
        import time
        deadline = time.monotonic() + 20
        while rss_mb(child.pid) < 150 and time.monotonic() < deadline:
            time.sleep(0.2)
        from_proc = rss_mb(child.pid)
        from_ps = rss_mb(child.pid, proc=tmp_path / "no-proc")
    finally:
        child.kill()
        child.wait()
    assert from_proc > 150
    assert abs(from_ps - from_proc) < 20


def _trial(number, start, end, train_s, eval_s):
    from datetime import datetime

    from optuna.distributions import FloatDistribution
    from optuna.trial import FrozenTrial, TrialState
    return FrozenTrial(number=number, state=TrialState.COMPLETE, value=0.5,
                       datetime_start=datetime.fromtimestamp(start), datetime_complete=datetime.fromtimestamp(end),
                       params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                       user_attrs={"train_s": train_s, "eval_s": eval_s}, system_attrs={},
                       intermediate_values={}, trial_id=number)


def test_accounting_counts_only_trials_that_end_inside_the_window():
    from benchmarks.night_utilization import Interval, account
    t0 = 1_800_000_000.0
    trials = [_trial(0, t0 + 10, t0 + 50, 20.0, 15.0), _trial(1, t0 + 55, t0 + 120, 30.0, 25.0)]
    loops = [Interval("train", t0 + 11, t0 + 31, loop_s=16.0), Interval("train", t0 + 56, t0 + 86, loop_s=26.0)]
    f = account("user", t0, t0 + 121, 100.0, trials, loops)
    assert (f.trials, f.train_s, f.loop_s, f.eval_s) == (1, 20.0, 16.0, 15.0)
    assert f.busy_share == 0.35 and f.overhead_s == 65.0
    assert (f.idle_s, f.overrun_s) == (0.0, 21.0)
    assert f.phases == {"night start": 10.0, "inside trials (besides train, eval)": 5.0, "between trials": 5.0,
                        "night end": 0.0, "cut by the hard stop": 45.0}
    early = account("ours", t0, t0 + 60, 100.0, trials[:1], loops[:1])
    assert (early.idle_s, early.overrun_s, early.phases["night end"]) == (40.0, 0.0, 10.0)
