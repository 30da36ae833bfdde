"""A window of a generative version's live traffic against its reference profile.

Label-free: the window is the inference log's rows (`generation_log` columns plus `context`
and `reference`), the reference the version's `reference_generation.parquet` (its
evaluation's test inputs and outputs). Every check answers one question about the window:

- prompts: the customer's message length (`source_chars`), prompt tokens, tokens per word
  of the message and article (text the tokenizer was not built for splits into more
  pieces), its share of non-letters, the share of prompts holding PII, and the words of the
  messages (`prompt_words`);
- outputs: output tokens (length), the words of the outputs (`output_words`) and, on the
  sampled requests that have one, the mean lookback ratio (attention on the input; judged
  once the window holds `MIN_NUMERIC_VALUES` of them);
- the live hallucination rate: the share of scored outputs the version's detector flags
  against the reference's, judged on the detector's scores; outputs not scored yet are
  left out and counted;
- PII leaks: the share of outputs holding PII their own input lacks.

The drift checks are classification's statistics (KS D, word chi-square, effect sizes net
of noise, floors from `monitoring`), calibrated by `monitoring.bootstrap_resamples` random
permutations because the reference is small (`permutation`). The hallucination rate is
significant when the detector's mean score rose beyond what permutations give, and
material when the flagged share rose by `generation.monitoring.min_hallucination_increase`;
PII leaks are a one-sided exact test of their rate against the reference's plus
`min_pii_leak_increase` (`flag_rate`). The checks that run share
`monitoring.false_alarm_rate` evenly, so a same-distribution window raises any alarm with
at most about that probability. Prompt embeddings are not checked: the log holds none
(they need a forward pass the server does not make).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from attnops.monitors.drift import CheckResult, DriftResult, EffectFloors
from attnops.monitors.flag_rate import RATE_KIND, FlagCount, rate_check
from attnops.monitors.generation_assessment import (
    HALLUCINATION_CHECK,
    PII_LEAK_CHECK,
    RATE_CHECKS,
    GenerationAssessment,
)
from attnops.monitors.permutation import Permutations, ks_check, mean_increase, words_check
from attnops.spec import PipelineSpec

GENERATION_PROFILE_TABLE = "reference_generation.parquet"
OUTPUT_PII_LEAKS = "output_pii_leaks"
"""Comma-separated PII entities of an output that its own input lacks ("" for none)."""
NUMERIC_CHECKS = (
    "prompt_tokens", "source_chars", "prompt_tokens_per_word", "source_non_letter_share",
    "has_pii", "output_tokens", "lookback_ratio",
)  # fmt: skip
WORD_CHECKS = {"prompt_words": "source", "output_words": "output"}
"""Word check -> the text column whose words it compares."""
ALL_CHECKS = (*NUMERIC_CHECKS, *WORD_CHECKS, *RATE_CHECKS)
MIN_NUMERIC_VALUES = 10
"""A numeric check runs when both sides hold at least this many values. The sampled ones
(the lookback ratio: a share of requests) may hold a handful per window, and a KS test of
3-5 values against the reference alarmed on same-distribution windows now and then."""
SCORE_KIND = "mean score increase"
_WORD = re.compile(r"\w+")


def assess_generation_window(
    window: pd.DataFrame, reference: pd.DataFrame, spec: PipelineSpec, *, seed: int = 0
) -> GenerationAssessment:
    """Judge one window of generation traffic against the version's reference profile.

    Args:
        window: inference-log rows (`generation_log` columns plus `context`); rows with a
            status of 400 or more are left out, as are, per check, missing values (a NULL
            detector score: not scored yet; a NULL lookback ratio: not sampled).
        reference: the version's `reference_generation.parquet`.
        spec: the pipeline spec (`monitoring`, `generation.monitoring`).
        seed: seeds the permutations that calibrate the drift checks: verdicts repeat.

    Raises:
        ValueError: no answered request in the window, a column either side lacks, or a
            `monitoring.effect_size_floors` name that is not a generation check.
    """
    monitoring, limits = spec.monitoring, spec.generation.monitoring
    unknown = sorted(set(monitoring.effect_size_floors) - set(ALL_CHECKS))
    if unknown:
        raise ValueError(
            f"monitoring.effect_size_floors names unknown check(s) {', '.join(unknown)} for "
            f"task generation; known: {', '.join(ALL_CHECKS)}"
        )
    answered = window[window["status"] < 400] if "status" in window else window
    if answered.empty:
        raise ValueError(f"the window's {len(window)} requests hold no answered one to judge")
    ref, cur = reference_features(reference), window_features(answered)
    floors = EffectFloors(
        ks_distance=monitoring.min_ks_distance,
        total_variation=monitoring.min_total_variation,
        per_check=monitoring.effect_size_floors,
    )
    hallucinations = _flag_count(ref["hallucinated"]), _flag_count(cur["hallucinated"])
    leaks = _flag_count(ref["pii_leak"]), _flag_count(cur["pii_leak"])
    numeric = [
        c
        for c in NUMERIC_CHECKS
        if min(ref[c].notna().sum(), cur[c].notna().sum()) >= MIN_NUMERIC_VALUES
    ]
    rates = [name for name, counts in ((HALLUCINATION_CHECK, hallucinations),
             (PII_LEAK_CHECK, leaks)) if all(c.judged for c in counts)]  # fmt: skip
    # Bonferroni: the checks that run share the false-alarm budget evenly.
    alpha = monitoring.false_alarm_rate / (len(numeric) + len(WORD_CHECKS) + len(rates))
    splits = Permutations(monitoring.bootstrap_resamples, np.random.default_rng(seed))
    checks = []
    for name in numeric:
        a, b = (side[name].dropna().to_numpy(dtype=float) for side in (ref, cur))
        floor = floors.of(name, "KS D")
        checks.append(ks_check(name, a, b, splits(len(a), len(b)), alpha=alpha, floor=floor))
    for name, column in WORD_CHECKS.items():
        floor = floors.of(name, "chi-square")
        split = splits(len(ref), len(cur))
        checks.append(words_check(name, ref[column], cur[column], split, alpha=alpha, floor=floor))
    p_values = {}
    if HALLUCINATION_CHECK in rates:
        floor = floors.of(HALLUCINATION_CHECK, SCORE_KIND, limits.min_hallucination_increase)
        check, p_values[HALLUCINATION_CHECK] = _hallucination_check(
            ref, cur, splits, alpha=alpha, floor=floor
        )
        checks.append(check)
    if PII_LEAK_CHECK in rates:
        floor = floors.of(PII_LEAK_CHECK, RATE_KIND, limits.min_pii_leak_increase)
        check, p_values[PII_LEAK_CHECK] = rate_check(
            PII_LEAK_CHECK, *leaks, alpha=alpha, floor=floor
        )
        checks.append(check)
    return GenerationAssessment(
        drift=DriftResult(checks, monitoring.false_alarm_rate),
        hallucinations=hallucinations[1],
        reference_hallucinations=hallucinations[0],
        pii_leaks=leaks[1],
        reference_pii_leaks=leaks[0],
        p_values=p_values,
        n=len(answered),
        n_failed=len(window) - len(answered),
    )


def _hallucination_check(
    ref: pd.DataFrame, cur: pd.DataFrame, splits: Permutations, *, alpha: float, floor: float
) -> tuple[CheckResult, float]:
    """The live hallucination rate against the reference's, and the check's p-value.

    Significant: the detector's mean score (P(hallucinated)) rose more than random splits
    of the pooled scored outputs give; the scores say more than the flags, whose threshold
    sits among the faithful outputs' scores (it lets 10% of them through), so a few flags
    more or less are noise. Material: the share of flagged outputs rose by `floor`.
    """
    r, c = (side[side["hallucinated"].notna()] for side in (ref, cur))
    scores = (side["hallucination_score"].to_numpy(dtype=float) for side in (r, c))
    diffs = mean_increase(*scores, splits(len(r), len(c)))
    increase = float(c["hallucinated"].mean() - r["hallucinated"].mean())
    check = CheckResult(
        name=HALLUCINATION_CHECK,
        kind=SCORE_KIND,
        statistic=float(diffs[0]),
        threshold=float(np.quantile(diffs[1:], 1.0 - alpha)),
        effect_size=max(increase, 0.0),
        floor=floor,
        n_reference=len(r),
        n_current=len(c),
    )
    return check, float((1 + np.sum(diffs[1:] >= diffs[0])) / len(diffs))


def reference_features(reference: pd.DataFrame) -> pd.DataFrame:
    """The reference profile's rows as the checks read them."""
    columns = ("source", "context", "output", "prompt_tokens", "output_tokens")
    _require(reference, (*columns, "hallucination_score", "hallucinated"), "the reference profile")
    frame = _text_features(reference)
    frame["has_pii"] = _nullable(reference.get("source_has_pii"), len(reference))
    frame["output_tokens"] = reference["output_tokens"].to_numpy(dtype=float)
    frame["lookback_ratio"] = (
        [float(np.mean(v)) for v in reference["lookback"]] if "lookback" in reference else np.nan
    )
    frame["hallucination_score"] = reference["hallucination_score"].to_numpy(dtype=float)
    frame["hallucinated"] = reference["hallucinated"].astype(float).to_numpy()
    # A profile written before leaks were stored: its gate allowed none (max_pii_leaks 0).
    leaks = reference.get(OUTPUT_PII_LEAKS, pd.Series("", index=reference.index))
    frame["pii_leak"] = _leak_flags(leaks)
    return frame


def window_features(window: pd.DataFrame) -> pd.DataFrame:
    """The inference log's rows as the checks read them."""
    columns = ("source", "context", "output", "prompt_tokens", "output_tokens")
    _require(window, (*columns, "hallucination_score", "hallucination_flag"), "the window")
    frame = _text_features(window)
    frame["has_pii"] = _nullable(window.get("has_pii"), len(window))
    frame["output_tokens"] = window["output_tokens"].to_numpy(dtype=float)
    frame["lookback_ratio"] = _nullable(window.get("lookback_ratio"), len(window))
    frame["hallucination_score"] = _nullable(window["hallucination_score"], len(window))
    # Scored: both the score and the flag are written (NULL until the detector ran).
    flags = _nullable(window["hallucination_flag"], len(window))
    frame["hallucinated"] = np.where(np.isnan(frame["hallucination_score"]), np.nan, flags)
    frame["pii_leak"] = _leak_flags(window.get(OUTPUT_PII_LEAKS, pd.Series(index=window.index)))
    return frame


def _text_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Prompt and output statistics of the stored (redacted) texts, the same on both sides."""
    source = frame["source"].fillna("").astype(str)
    context = frame["context"].fillna("").astype(str)
    words = (source + " " + context).map(lambda t: len(_WORD.findall(t)))
    letters = source.map(lambda t: sum(ch.isalpha() for ch in t))
    visible = source.map(lambda t: sum(not ch.isspace() for ch in t))
    prompt_tokens = frame["prompt_tokens"].to_numpy(dtype=float)
    return pd.DataFrame(
        {
            "source": source.to_numpy(),
            "output": frame["output"].fillna("").astype(str).to_numpy(),
            "prompt_tokens": prompt_tokens,
            "source_chars": source.str.len().to_numpy(dtype=float),
            "prompt_tokens_per_word": prompt_tokens / np.maximum(words.to_numpy(), 1),
            "source_non_letter_share": 1.0 - letters.to_numpy() / np.maximum(visible, 1),
        }
    )


def _nullable(column: pd.Series | None, n: int) -> np.ndarray:
    """Floats with NaN for NULL (booleans as 0/1); all NaN when the column is absent."""
    if column is None:
        return np.full(n, np.nan)
    return pd.to_numeric(column.astype(object), errors="coerce").to_numpy(dtype=float)


def _leak_flags(column: pd.Series) -> np.ndarray:
    """1 for an output with leaked entities, 0 for none, NaN where not checked (NULL)."""
    return np.array([np.nan if pd.isna(v) else float(bool(v)) for v in column], dtype=float)


def _flag_count(flags: pd.Series) -> FlagCount:
    judged = flags.dropna()
    return FlagCount(int(judged.sum()), len(judged), pending=len(flags) - len(judged))


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(
            f"{what} lacks column(s) {', '.join(missing)} (it has: {', '.join(frame.columns)})"
        )
