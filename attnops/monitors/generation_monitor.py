"""A window of a generative version's live traffic against its reference profile.

Label-free: the window is the inference log's rows (`generation_log` columns plus `context`
and `reference`), the reference the version's `reference_generation.parquet` (its
evaluation's test inputs and outputs). Every check answers one question about the window:

- prompts: the customer's message length (`source_chars`), prompt tokens, tokens per word
  of the message and article (text the tokenizer was not built for splits into more
  pieces), its share of non-letters, the share of prompts holding PII, and the words of the
  messages (`prompt_words`);
- outputs: output tokens (length), the words of the outputs (`output_words`) and, on the
  sampled requests that have one, the mean lookback ratio (attention on the input);
- the live hallucination rate: the share of scored outputs the version's detector flags
  against the reference's flag rate; outputs not scored yet are left out and counted;
- PII leaks: the share of outputs holding PII their own input lacks.

The drift checks are classification's statistics (KS D, word chi-square, effect sizes net
of noise, floors from `monitoring`), calibrated by permutation because the reference is
small (`permutation`); the two rates are one-sided exact tests (`flag_rate`) with their
floors from `generation.monitoring`. All share `monitoring.false_alarm_rate`, so a
same-distribution window raises any alarm with at most about that probability: the
hallucination rate takes `generation.monitoring.hallucination_alarm_share` of it (with a
reference of tens of outputs its rate is uncertain, and the check needs the room), the
others split the rest evenly. Prompt embeddings are not checked: the log holds none (they
need a forward pass the server does not make).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from attnops.monitors.drift import DriftResult, EffectFloors
from attnops.monitors.flag_rate import RATE_KIND, FlagCount, rate_check
from attnops.monitors.generation_assessment import (
    HALLUCINATION_CHECK,
    PII_LEAK_CHECK,
    RATE_CHECKS,
    GenerationAssessment,
)
from attnops.monitors.permutation import Permutations, ks_check, words_check
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
    counts = {
        HALLUCINATION_CHECK: (
            _flag_count(ref["hallucinated"]),
            _flag_count(cur["hallucinated"]),
            limits.min_hallucination_increase,
        ),
        PII_LEAK_CHECK: (
            _flag_count(ref["pii_leak"]),
            _flag_count(cur["pii_leak"]),
            limits.min_pii_leak_increase,
        ),
    }
    numeric = [c for c in NUMERIC_CHECKS if ref[c].notna().any() and cur[c].notna().any()]
    rates = [name for name, (r, w, _) in counts.items() if r.judged and w.judged]
    alphas = _budget(
        [*numeric, *WORD_CHECKS, *rates],
        monitoring.false_alarm_rate,
        limits.hallucination_alarm_share,
    )
    splits = Permutations(monitoring.bootstrap_resamples, np.random.default_rng(seed))
    checks = []
    for name in numeric:
        a, b = (side[name].dropna().to_numpy(dtype=float) for side in (ref, cur))
        floor = floors.of(name, "KS D")
        split = splits(len(a), len(b))
        checks.append(ks_check(name, a, b, split, alpha=alphas[name], floor=floor))
    for name, column in WORD_CHECKS.items():
        floor = floors.of(name, "chi-square")
        split = splits(len(ref), len(cur))
        check = words_check(name, ref[column], cur[column], split, alpha=alphas[name], floor=floor)
        checks.append(check)
    p_values = {}
    for name in rates:
        reference_count, window_count, floor = counts[name]
        floor = floors.of(name, RATE_KIND, floor)
        check, p_values[name] = rate_check(
            name, reference_count, window_count, alpha=alphas[name], floor=floor
        )
        checks.append(check)
    return GenerationAssessment(
        drift=DriftResult(checks, monitoring.false_alarm_rate),
        hallucinations=counts[HALLUCINATION_CHECK][1],
        reference_hallucinations=counts[HALLUCINATION_CHECK][0],
        pii_leaks=counts[PII_LEAK_CHECK][1],
        reference_pii_leaks=counts[PII_LEAK_CHECK][0],
        p_values=p_values,
        n=len(answered),
        n_failed=len(window) - len(answered),
    )


def _budget(names: list[str], false_alarm_rate: float, hallucination_share: float) -> dict:
    """Each check's false-alarm probability: they sum to `false_alarm_rate` (Bonferroni),
    the hallucination rate, when it runs, taking `hallucination_share` of it."""
    if HALLUCINATION_CHECK not in names:
        return dict.fromkeys(names, false_alarm_rate / len(names))
    rest = false_alarm_rate * (1 - hallucination_share) / (len(names) - 1)
    return dict.fromkeys(names, rest) | {
        HALLUCINATION_CHECK: false_alarm_rate * hallucination_share
    }


def reference_features(reference: pd.DataFrame) -> pd.DataFrame:
    """The reference profile's rows as the checks read them."""
    _require(reference, ("source", "context", "output", "prompt_tokens", "output_tokens",
                         "hallucinated"), "the reference profile")  # fmt: skip
    frame = _text_features(reference)
    frame["has_pii"] = _nullable(reference.get("source_has_pii"), len(reference))
    frame["output_tokens"] = reference["output_tokens"].to_numpy(dtype=float)
    frame["lookback_ratio"] = (
        [float(np.mean(v)) for v in reference["lookback"]] if "lookback" in reference else np.nan
    )
    frame["hallucinated"] = reference["hallucinated"].astype(float).to_numpy()
    # A profile written before leaks were stored: its gate allowed none (max_pii_leaks 0).
    leaks = reference.get(OUTPUT_PII_LEAKS, pd.Series("", index=reference.index))
    frame["pii_leak"] = _leak_flags(leaks)
    return frame


def window_features(window: pd.DataFrame) -> pd.DataFrame:
    """The inference log's rows as the checks read them."""
    _require(window, ("source", "context", "output", "prompt_tokens", "output_tokens",
                      "hallucination_flag"), "the window")  # fmt: skip
    frame = _text_features(window)
    frame["has_pii"] = _nullable(window.get("has_pii"), len(window))
    frame["output_tokens"] = window["output_tokens"].to_numpy(dtype=float)
    frame["lookback_ratio"] = _nullable(window.get("lookback_ratio"), len(window))
    frame["hallucinated"] = _nullable(window["hallucination_flag"], len(window))
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
