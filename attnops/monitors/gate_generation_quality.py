"""Generation gate checks on the candidate's outputs: good enough, and better than before?

Against a ROUGE-L floor, the champion decoded on the same inputs (paired: a bootstrap CI
of the per-input ROUGE-L difference, McNemar's exact test on the hallucination flags) and
the untuned base model decoded on the same inputs (did fine-tuning pay off?). Each returns a
`GateCheck` with its numbers and a reason a reviewer can act on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnops.monitors.checks import GateCheck
from attnops.monitors.significance import mcnemar_exact
from attnops.spec_generation import GenerationGateSpec

BASE_COLUMNS = ("baseline_rouge_l", "baseline_hallucinated")


def paired_mean_difference(
    candidate: np.ndarray, other: np.ndarray, confidence: float, n_resamples: int = 2000
) -> tuple[float, float, float]:
    """Mean of (candidate - other) per input and its two-sided paired-bootstrap CI.

    Resampling inputs keeps each input's two scores together, so the interval reflects how
    the versions differ on the same inputs rather than how hard the inputs are.
    """
    differences = np.asarray(candidate, dtype=float) - np.asarray(other, dtype=float)
    rng = np.random.default_rng(0)
    resampled = differences[rng.integers(0, len(differences), (n_resamples, len(differences)))]
    alpha = 1.0 - confidence
    low, high = np.quantile(resampled.mean(axis=1), [alpha / 2, 1 - alpha / 2])
    return float(differences.mean()), float(low), float(high)


def rouge_l_floor_check(frame: pd.DataFrame, gate: GenerationGateSpec) -> GateCheck:
    value = float(frame["rouge_l"].mean())
    return GateCheck.of(
        "rouge_l_floor",
        value >= gate.min_rouge_l,
        f"mean ROUGE-L {value:.4f} on {len(frame)} test inputs (floor {gate.min_rouge_l:g})",
        rouge_l=value,
        n=len(frame),
    )


def rouge_l_vs_champion_check(
    frame: pd.DataFrame, champion: pd.DataFrame, gate: GenerationGateSpec, confidence: float
) -> tuple[str, GateCheck]:
    """The verdict and non-inferiority on paired per-input ROUGE-L (same inputs, same order)."""
    margin = gate.rouge_l_non_inferiority_margin
    difference, low, high = paired_mean_difference(
        frame["rouge_l"].to_numpy(), champion["rouge_l"].to_numpy(), confidence
    )
    verdict = "better" if low > 0 else "worse" if high < 0 else "no_difference"
    scores = (
        f"ROUGE-L {frame['rouge_l'].mean():.4f} vs champion {champion['rouge_l'].mean():.4f}: "
        f"difference {difference:+.4f}, {confidence:.0%} paired-bootstrap CI [{low:+.4f}, "
        f"{high:+.4f}] on {len(frame)} inputs (non-inferiority margin {margin:g})"
    )
    non_inferior = low >= -margin
    if non_inferior or verdict == "worse":
        reason = f"{verdict.replace('_', ' ')}: {scores}"
    else:
        reason = (
            f"inconclusive, not shown to be within {margin:g} of the champion: {scores}; "
            "decode more test inputs (generation.eval_samples) or widen "
            "generation_gate.rouge_l_non_inferiority_margin"
        )
    return verdict, GateCheck.of(
        "rouge_l_vs_champion",
        non_inferior,
        reason,
        difference=difference,
        ci_low=low,
        ci_high=high,
        margin=margin,
        n=len(frame),
    )


def flag_comparison(candidate: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """Both flag rates and McNemar's exact p-value on the inputs only one of the two flags."""
    candidate, other = np.asarray(candidate, dtype=bool), np.asarray(other, dtype=bool)
    # "Right" = not flagged, so the discordant pairs are the inputs flagged by one side only.
    p_value = mcnemar_exact(np.zeros(len(candidate), bool), candidate, other)
    return float(candidate.mean()), float(other.mean()), p_value


def hallucination_check(
    frame: pd.DataFrame,
    champion: pd.DataFrame | None,
    gate: GenerationGateSpec,
    confidence: float,
) -> GateCheck:
    """An absolute limit on the flagged share, and vs the champion an increase beyond
    `max_hallucination_increase` that is also significant (paired flags, McNemar exact)."""
    flags = frame["hallucinated"].to_numpy(dtype=bool)
    rate, n = float(flags.mean()), len(flags)
    problems = []
    if rate > gate.max_hallucination_rate:
        problems.append(
            f"hallucination rate {rate:.3f} of {n} outputs over the limit "
            f"{gate.max_hallucination_rate:g}"
        )
    reason = f"hallucination rate {rate:.3f} of {n} outputs (max {gate.max_hallucination_rate:g})"
    values: dict[str, object] = {"rate": rate, "n": n}
    if champion is not None:
        _, champ_rate, p_value = flag_comparison(flags, champion["hallucinated"])
        values |= {"champion_rate": champ_rate, "p_value": p_value}
        versus = f"McNemar exact p={p_value:.3g}"
        reason += f"; champion {champ_rate:.3f}, {versus}"
        tolerance = gate.max_hallucination_increase
        tolerated = f" by more than the tolerated {tolerance:g}" if tolerance else ""
        if rate - champ_rate > tolerance and p_value < 1 - confidence:
            problems.append(
                f"hallucination rate {rate:.3f} vs champion {champ_rate:.3f}: higher{tolerated}, "
                f"{versus}"
            )
    return GateCheck.of("hallucination", not problems, "; ".join(problems) or reason, **values)


def base_checks(
    frame: pd.DataFrame, gate: GenerationGateSpec, confidence: float
) -> list[GateCheck]:
    """Did fine-tuning pay off over the untuned base model decoded on the same inputs?"""
    present = [c for c in BASE_COLUMNS if c in frame]
    if not gate.require_beats_base or not present:
        why = (
            "switched off (generation_gate.require_beats_base: false)"
            if not gate.require_beats_base
            else "not compared: the evaluation has no zero-shot base outputs "
            "(generation.zero_shot_baseline: false)"
        )
        return [GateCheck.of("vs_zero_shot_base", True, why)]
    if len(present) < len(BASE_COLUMNS):
        raise ValueError(
            f"the per-input evaluation has {present[0]} but not all of {', '.join(BASE_COLUMNS)}; "
            "re-run attnops.models.generation.evaluate with generation.zero_shot_baseline: true"
        )
    return [_rouge_l_gain_check(frame, gate, confidence), _fewer_flags_check(frame, confidence)]


def _rouge_l_gain_check(
    frame: pd.DataFrame, gate: GenerationGateSpec, confidence: float
) -> GateCheck:
    wanted = gate.min_rouge_l_gain_over_base
    gain, low, high = paired_mean_difference(
        frame["rouge_l"].to_numpy(), frame["baseline_rouge_l"].to_numpy(), confidence
    )
    scores = (
        f"ROUGE-L {frame['rouge_l'].mean():.4f} vs zero-shot base "
        f"{frame['baseline_rouge_l'].mean():.4f}: gain {gain:+.4f}, {confidence:.0%} "
        f"paired-bootstrap CI [{low:+.4f}, {high:+.4f}] on {len(frame)} inputs"
    )
    passed = low >= wanted
    reason = f"gains at least {wanted:g} over the zero-shot base: {scores}"
    if not passed:
        # A CI too wide to clear the bar is fixed by more inputs; a gain below it is not.
        hint = "decode more test inputs" if gain >= wanted else "the gain itself is below it"
        reason = (
            f"not shown to gain {wanted:g} ROUGE-L over the zero-shot base: {scores}; {hint} "
            "(or lower generation_gate.min_rouge_l_gain_over_base)"
        )
    return GateCheck.of(
        "rouge_l_vs_base", passed, reason, gain=gain, ci_low=low, ci_high=high, min_gain=wanted
    )


def _fewer_flags_check(frame: pd.DataFrame, confidence: float) -> GateCheck:
    rate, base_rate, p_value = flag_comparison(
        frame["hallucinated"], frame["baseline_hallucinated"]
    )
    scores = (
        f"hallucination rate {rate:.3f} vs zero-shot base {base_rate:.3f}, "
        f"McNemar exact p={p_value:.3g}"
    )
    # A candidate that flags nothing cannot be lower still: it passes whatever the base does.
    passed = rate == 0 or (rate < base_rate and p_value < 1 - confidence)
    if rate == 0:
        reason = f"no output flagged, so none to cut (whatever the base does): {scores}"
    elif passed:
        reason = f"significantly fewer hallucinations than the zero-shot base: {scores}"
    else:
        reason = (
            f"not significantly fewer hallucinations than the zero-shot base: {scores}; "
            "fine-tuning did not make replies more grounded (set "
            "generation_gate.require_beats_base: false to accept that)"
        )
    return GateCheck.of(
        "hallucination_vs_base", passed, reason, rate=rate, base_rate=base_rate, p_value=p_value
    )
