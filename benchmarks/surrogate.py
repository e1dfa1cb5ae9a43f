"""A surrogate Council score over the nine searched parameters (search_space.yaml).

Not a model of any one run: a surface with the features that made the user's search
hard, shaped after what the demo and the seed measured (DESIGN §5, §6), so search
policies can be compared over thousands of trials in minutes.

Training amount. What a LoRA adapter learns within budget grows with the learning
rate, the LoRA scale (alpha / rank: with Adam the update of the low-rank matrices does
not depend on the gradient's size, so the adapter's output moves with lr × scale) and
the number of optimizer updates (ITERS / GRAD_ACCUM):

    A = log10(LEARNING_RATE) + log10((LORA_ALPHA / LORA_RANK) / 2) + log10((ITERS / GRAD_ACCUM) / 200)

(the baseline has A = -5.30). The score rises with A toward the variant's `a_peak` and
falls past it, faster than it rose: v2 "more data, longer training" over-fitted and
regressed. That is the learning-rate × iterations interaction.

Alpha/rank ridge. Besides entering A, the scale itself has a best value (too small and
the adapter barely changes the model at any lr, too large and training is unstable): the
score lies on a ridge along LORA_ALPHA ≈ scale_opt × LORA_RANK, with a mild preference
for mid ranks along it. One-parameter moves in LORA_ALPHA or LORA_RANK step off it.

Capacity. More LoRA layers help up to `layers_opt` (a quadratic drop-off away from it);
longer MAX_SEQ_LENGTH truncates fewer sessions (+0.04 from 512 to 1280, linear); the
real-to-synthetic DATA_MIX_RATIO has a best share `mix_opt`; DROPOUT near 0.05 and
GRAD_ACCUM near 4 are slightly best.

    score = 0.50 + 0.30 × fit(A) × ridge(scale) × capacity(layers, rank)
            + seq + mix + dropout + accum terms

Out of memory: NUM_LAYERS > 32 with MAX_SEQ_LENGTH > 1024 does not fit (the seed: "above
32 layers OOMs"). Such a trial is recorded as objective.py records it: value 0.0 and
constraint `oom` = 1.

Jailbreak veto (Windu): over-aggressive training erodes refusals. The jailbreak
category's score is 0.85 until A passes a threshold that starts 0.25 decades below
`a_peak` and moves up with more dropout and with more synthetic data (whose refusals
are part of the training set), then falls by 0.1 for every tenth of a decade past it:

    jb = 0.85 - max(0, A - (a_peak - 0.25 + 2 (DROPOUT - 0.05) + 0.4 (0.5 - DATA_MIX_RATIO)))

so at the baseline's dropout and mix the veto (jb < 0.70) starts 0.10 decades before the
score's peak: the unconstrained optimum is infeasible, the constrained one lies on the
boundary, and a policy must trade dropout and data mix against training amount to reach
it. Like the gate, the constraint is `jailbreak` = 0.70 - observed jb (sd 0.03: a 35-case
category), and `regression` = -0.08 + N(0, 0.02) (agents stay within the cap).

Noise: the observed score is the true score plus N(0, 0.012), the null standard deviation
of the overall score measured on the 175-case eval (benchmarks/README.md, False
promotions). Policies are compared on the TRUE score of truly feasible trials.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOISE_SD = 0.012
JB_NOISE_SD = 0.03
JB_FLOOR = 0.70


@dataclass(frozen=True)
class Variant:
    name: str
    about: str
    mode: str = "proxy"
    a_peak: float = -3.8        # best training amount, log10 units
    scale_opt: float = 2.0      # alpha / rank at the ridge's crest
    layers_opt: float = 48.0
    mix_opt: float = 0.6


VARIANTS = {
    "demo-like": Variant(
        "demo-like",
        "as the demo measured: high lr and more layers help (48 layers best), so the "
        "warm start's known-good moves point the right way"),
    "shifted": Variant(
        "shifted",
        "a base model that wants gentler training: best A two thirds of a decade lower "
        "(lr about 2e-5 at the baseline's other values), scale 1, 24 layers, a synthetic-"
        "heavy mix: the known-good moves overshoot into the jailbreak veto",
        a_peak=-4.5, scale_opt=1.0, layers_opt=24.0, mix_opt=0.3),
}


def training_amount(p: dict) -> float:
    scale = p["LORA_ALPHA"] / p["LORA_RANK"]
    return (math.log10(p["LEARNING_RATE"]) + math.log10(scale / 2.0)
            + math.log10(p["ITERS"] / p["GRAD_ACCUM"] / 200.0))


def true_score(p: dict, v: Variant) -> float:
    a = training_amount(p)
    width = 0.55 if a < v.a_peak else 0.30
    fit = math.exp(-0.5 * ((a - v.a_peak) / width) ** 2)
    ridge = math.exp(-0.5 * (math.log2((p["LORA_ALPHA"] / p["LORA_RANK"]) / v.scale_opt)) ** 2)
    capacity = (1.0 - 0.35 * ((p["NUM_LAYERS"] - v.layers_opt) / 32.0) ** 2
                - 0.05 * (math.log2(p["LORA_RANK"] / 24.0) / 1.5) ** 2)
    seq = 0.04 * (p["MAX_SEQ_LENGTH"] - 512) / 768
    mix = -0.08 * ((p["DATA_MIX_RATIO"] - v.mix_opt) / 0.4) ** 2
    dropout = -0.02 * ((p["DROPOUT"] - 0.05) / 0.1) ** 2
    accum = -0.01 * math.log2(p["GRAD_ACCUM"] / 4.0) ** 2
    return 0.50 + 0.30 * fit * ridge * capacity + seq + mix + dropout + accum


def jailbreak(p: dict, v: Variant) -> float:
    threshold = (v.a_peak - 0.25 + 2.0 * (p["DROPOUT"] - 0.05)
                 + 0.4 * (0.5 - p["DATA_MIX_RATIO"]))
    return 0.85 - max(0.0, training_amount(p) - threshold)


def ooms(p: dict) -> bool:
    return p["NUM_LAYERS"] > 32 and p["MAX_SEQ_LENGTH"] > 1024


def truly_feasible(p: dict, v: Variant) -> bool:
    return not ooms(p) and jailbreak(p, v) >= JB_FLOOR


@dataclass(frozen=True)
class Outcome:
    value: float                 # what the objective returns (0.0 on OOM)
    constraints: dict            # what it sets with trial.set_constraint
    true: float
    feasible: bool               # truly feasible (no noise)


def observe(p: dict, v: Variant, rng: np.random.Generator) -> Outcome:
    if ooms(p):
        return Outcome(0.0, {"oom": 1.0}, true_score(p, v), False)
    jb = jailbreak(p, v) + rng.normal(0.0, JB_NOISE_SD)
    value = true_score(p, v) + rng.normal(0.0, NOISE_SD)
    regression = -0.08 + rng.normal(0.0, 0.02)     # agents stay within the cap: feasible, noisy
    return Outcome(value, {"jailbreak": round(JB_FLOOR - jb, 6), "regression": round(regression, 6)},
                   true_score(p, v), truly_feasible(p, v))
