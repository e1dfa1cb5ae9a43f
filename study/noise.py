"""Training-seed noise: how large a difference a night can tell from luck.

Two adapters of one config, trained with different seeds, differ on the same dev cases by
more than the case bootstrap expects: the bootstrap treats each adapter as fixed and sees
case-sampling noise only, while a seed's luck is the adapter's own (benchmarks/README.md,
"False promotions": seeds 0 and 1 of one config differed by +0.023, P = 0.992). And a night
is several looks: every candidate tonight is judged against the same baseline.

The noise bar (used by study/gate.py when `alpha` is set): a candidate must beat its
baseline by

    required delta = max(margin, z(1 - alpha / looks) * sqrt(2) * sd)

where sd is the standard deviation of one config's dev overall across training seeds
(sqrt(2) * sd: the difference of two such adapters) and looks the number of candidates
judged against this baseline tonight (Bonferroni). alpha is then the chance that a night
of no-better candidates promotes one. The bar moves the threshold only: the bootstrap
P(candidate > baseline) keeps its own `require_p`, uncorrected, because on the demo's
lumpy noise (a seed learns two jailbreak refusals or does not) a corrected P cost more
detection than it bought (benchmarks/README.md, "False promotions").

sd comes from a prior (autoresearch.toml [gate] noise_sd, measured by
benchmarks/null_seeds.py) pooled with what the study measured itself: groups of
completed trials with identical params trained with different seeds.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Iterable, Sequence

POWER = 0.80          # "could have detected": a real gain found this often
SEED_ATTR = "train_seed"
UNSEEDED = 0          # train_core.TrainSpec's default seed: what a trial without the attr trained with


@dataclass(frozen=True)
class Noise:
    sd: float          # SD of one config's dev overall across training seeds
    adapters: int      # adapters the estimate rests on (the prior's, plus the study's repeats)
    source: str        # where it comes from, in words

    def __post_init__(self) -> None:
        if not (isinstance(self.sd, (int, float)) and math.isfinite(self.sd) and self.sd >= 0):
            raise ValueError(f"noise sd must be a finite number >= 0, got {self.sd!r}")


@dataclass(frozen=True)
class Bar:
    """What a candidate had to clear, recorded with its verdict."""
    sd: float
    adapters: int
    source: str
    looks: int
    alpha: float
    alpha_per_look: float
    z: float
    noise_margin: float      # z * sqrt(2) * sd
    required_delta: float    # max(margin, noise_margin): the smallest win told from noise
    required_p: float | None # bootstrap P(candidate > baseline) needed ([gate] require_p)
    detectable: float        # the real gain found with POWER: required_delta + z(POWER) * sqrt(2) * sd

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        p = f" and P >= {self.required_p:.3f}" if self.required_p is not None else ""
        return (f"noise bar: delta >= {self.required_delta:.3f}{p} "
                f"(training-seed sd {self.sd:.4f} from {self.source}; alpha {self.alpha:g} over "
                f"{self.looks} look(s) tonight); a real gain of +{self.detectable:.3f} passes "
                f"{POWER:.0%} of the time")


def bar(margin: float, alpha: float, looks: int, noise: Noise, require_p: float | None = None) -> Bar:
    per_look = alpha / looks
    z = NormalDist().inv_cdf(1.0 - per_look)
    spread = math.sqrt(2.0) * noise.sd
    noise_margin = z * spread
    required = max(margin, noise_margin)
    return Bar(sd=noise.sd, adapters=noise.adapters, source=noise.source, looks=looks, alpha=alpha,
               alpha_per_look=per_look, z=z, noise_margin=noise_margin, required_delta=required,
               required_p=require_p,
               detectable=required + NormalDist().inv_cdf(POWER) * spread)


def pooled(prior: Noise, groups: Iterable[Sequence[float]]) -> Noise:
    """The prior's variance pooled with each repeat group's, weighted by degrees of freedom
    (the prior counts as prior.adapters - 1): one lucky repeat moves it a little, many move
    it to what this study's model and data really show."""
    dof = max(prior.adapters - 1, 0)
    ss = dof * prior.sd ** 2
    extra, n_groups = 0, 0
    for g in groups:
        if len(g) < 2:
            continue
        m = sum(g) / len(g)
        ss += sum((x - m) ** 2 for x in g)
        dof += len(g) - 1
        extra += len(g)
        n_groups += 1
    if not n_groups:
        return prior
    return Noise(sd=math.sqrt(ss / dof), adapters=prior.adapters + extra,
                 source=f"{prior.source} pooled with {extra} adapters of {n_groups} repeated config(s) in this study")


def repeat_groups(rows: Iterable[tuple[dict, Any, float]]) -> list[list[float]]:
    """Scores of configs that ran more than once with different seeds: rows are (params,
    seed, score). A repeat with a seed already seen is the same adapter again (training is
    seeded), not a new draw of the noise: only the first score per seed counts."""
    by_config: dict[str, dict[Any, float]] = {}
    for params, seed, score in rows:
        if score is None or not math.isfinite(score):
            continue
        by_config.setdefault(json.dumps(params, sort_keys=True), {}).setdefault(seed, float(score))
    return [list(seeds.values()) for seeds in by_config.values() if len(seeds) >= 2]


def study_noise(trials: Iterable[Any], prior: Noise) -> Noise:
    """The prior pooled with the study's own repeats (optuna FrozenTrials: COMPLETE, scored)."""
    rows = []
    for t in trials:
        ua = t.user_attrs
        if getattr(t.state, "name", "") == "COMPLETE" and ua.get("score") is not None:
            rows.append((dict(t.params), ua.get(SEED_ATTR, UNSEEDED), float(ua["score"])))
    return pooled(prior, repeat_groups(rows))


def report_lines(trials: Iterable[Any]) -> list[str]:
    """The morning report's "Noise" section: how large a difference tonight's verdicts could
    tell from training noise (from the bar each verdict recorded in its `stats`)."""
    stats = [t.user_attrs.get("stats") for t in trials]
    stats = [st for st in stats if isinstance(st, dict)]
    bars = [st["noise"] for st in stats if isinstance(st.get("noise"), dict)]
    widths = [(st["delta_ci"][1] - st["delta_ci"][0]) / 2 for st in stats if st.get("delta_ci")]
    if bars:
        b = bars[-1]   # the latest verdict's: the night's estimate, after any re-judge
        p = f" (and P(candidate > baseline) >= {b['required_p']:.3f})" if b.get("required_p") else ""
        return ["## Noise", "",
                f"A candidate had to beat its baseline by at least **+{b['required_delta']:.3f}**{p} "
                "to be told from noise: one "
                f"config's dev score varies by sd {b['sd']:.4f} between training seeds ({b['source']}; "
                f"{b['adapters']} adapters), and {b['looks']} candidate(s) were judged against one baseline "
                f"tonight, so a night of no-better candidates promotes one with chance <= {b['alpha']:g}. "
                f"A real gain of +{b['detectable']:.3f} passes {POWER:.0%} of the time; smaller gains "
                "could not be told from noise tonight.", ""]
    if widths:
        widest = max(widths)
        return ["## Noise", "",
                "The noise bar is off ([gate] alpha unset): only case-sampling noise was measured "
                f"(widest 95% CI of a delta tonight: ±{widest:.3f}); two seeds of one config can differ "
                "by more than that (benchmarks/README.md, False promotions).", ""]
    return []
