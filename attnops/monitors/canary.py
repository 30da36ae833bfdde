"""Canary vs champion on live traffic: may the canary become the champion?

Sticky routing splits request keys at random, so both versions see the same input
distribution over the same period; differences in their logged answers are the versions'
own. Every check returns its numbers and a reason, as in the release gate, and a check
only fails on a difference the data supports (a significance test, not a point estimate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from attnops.monitors.checks import Decision, GateCheck
from attnops.spec import ReleaseSpec

MIN_LABELLED = 30
"""Labelled requests each side needs before accuracy is compared."""


@dataclass(frozen=True, kw_only=True)
class CanaryDecision(Decision):
    canary: str
    champion: str

    @property
    def promote(self) -> bool:
        return self.passed

    @property
    def passed_note(self) -> str:
        return "live checks passed"

    def to_dict(self) -> dict[str, object]:
        return {
            "promote": self.promote,
            "canary": self.canary,
            "champion": self.champion,
            "reasons": self.reasons(),
            "checks": [asdict(c) for c in self.checks],
        }


def compare_canary(
    canary: pd.DataFrame,
    champion: pd.DataFrame,
    release: ReleaseSpec,
    *,
    canary_version: str,
    champion_version: str,
    confidence: float = 0.95,
) -> CanaryDecision:
    """Judge the canary's window of logged requests against the champion's, same period.

    Args:
        canary, champion: inference-log rows (`status`, `latency_ms`, `prediction`,
            `confidence`, `unsupported`, `has_pii`, `label` where feedback arrived).
        release: the spec's release limits.
        confidence: level of the one-sided tests.
    """
    if len(canary) == 0 or len(champion) == 0:
        raise ValueError(
            f"no live requests to compare (canary {len(canary)}, champion {len(champion)})"
        )
    alpha = 1 - confidence
    checks = [
        rate_increase_check(
            "error_rate",
            canary["status"] != 200,
            champion["status"] != 200,
            release.max_error_rate_increase,
            alpha,
        ),
        _latency(canary, champion, release.max_latency_increase, confidence),
        rate_increase_check(
            "unsupported_assertions",
            canary["unsupported"].astype(bool),
            champion["unsupported"].astype(bool),
            release.max_unsupported_assertion_increase,
            alpha,
        ),
        rate_increase_check(
            "pii_share",
            canary["has_pii"].astype(bool),
            champion["has_pii"].astype(bool),
            release.max_pii_share_increase,
            alpha,
        ),
        _accuracy(canary, champion, release.max_accuracy_drop, alpha),
        _prediction_shift(canary, champion),
    ]
    return CanaryDecision(canary=canary_version, champion=champion_version, checks=checks)


def rate_increase_check(
    name: str, canary: pd.Series, champion: pd.Series, max_increase: float, alpha: float
) -> GateCheck:
    """Fails when the canary's rate exceeds the champion's by more than `max_increase`,
    significantly (one-sided two-proportion z-test against that margin)."""
    p1, n1, p0, n0 = float(canary.mean()), len(canary), float(champion.mean()), len(champion)
    pooled = (canary.sum() + champion.sum()) / (n1 + n0)
    spread = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n0))
    p_value = float(stats.norm.sf((p1 - p0 - max_increase) / spread))
    failed = p1 - p0 > max_increase and p_value < alpha
    reason = (
        f"canary {p1:.2%} of {n1} vs champion {p0:.2%} of {n0} (max +{max_increase:.0%}, "
        f"p={p_value:.3g})"
    )
    return GateCheck.of(name, not failed, reason, canary=p1, champion=p0, p_value=p_value)


def _latency(
    canary: pd.DataFrame, champion: pd.DataFrame, max_increase: float, confidence: float
) -> GateCheck:
    ok1 = canary.loc[canary["status"] == 200, "latency_ms"].to_numpy(dtype=float)
    ok0 = champion.loc[champion["status"] == 200, "latency_ms"].to_numpy(dtype=float)
    return p95_ratio_check("latency_ms_p95", ok1, ok0, max_increase, confidence)


def p95_ratio_check(
    name: str,
    canary_ms: np.ndarray,
    champion_ms: np.ndarray,
    max_increase: float,
    confidence: float,
) -> GateCheck:
    """p95 ratio with a bootstrap lower bound: slower only when the data says so."""
    if len(canary_ms) < 5 or len(champion_ms) < 5:
        return GateCheck.of(name, True, "fewer than 5 answered requests on a side")
    rng = np.random.default_rng(0)
    boot1 = np.percentile(
        canary_ms[rng.integers(0, len(canary_ms), (1000, len(canary_ms)))], 95, axis=1
    )
    boot0 = np.percentile(
        champion_ms[rng.integers(0, len(champion_ms), (1000, len(champion_ms)))], 95, axis=1
    )
    low = float(np.quantile(boot1 / np.maximum(boot0, 1e-9), 1 - confidence))
    p1, p0 = float(np.percentile(canary_ms, 95)), float(np.percentile(champion_ms, 95))
    reason = (
        f"p95 {p1:.1f} ms vs champion {p0:.1f} ms: x{p1 / max(p0, 1e-9):.2f} "
        f"({confidence:.0%} lower bound x{low:.2f}, max x{1 + max_increase:g})"
    )
    return GateCheck.of(name, low <= 1 + max_increase, reason, canary=p1, champion=p0, lower=low)


def _accuracy(
    canary: pd.DataFrame, champion: pd.DataFrame, max_drop: float, alpha: float
) -> GateCheck:
    def labelled(frame: pd.DataFrame) -> pd.Series:
        rows = frame[frame["label"].notna() & (frame["status"] == 200)]
        return rows["prediction"] == rows["label"]

    right1, right0 = labelled(canary), labelled(champion)
    if len(right1) < MIN_LABELLED or len(right0) < MIN_LABELLED:
        return GateCheck.of(
            "accuracy",
            True,
            f"only {len(right1)} canary / {len(right0)} champion labelled requests "
            f"(need {MIN_LABELLED} each); not compared",
        )
    check = rate_increase_check("accuracy", ~right1, ~right0, max_drop, alpha)
    a1, a0 = float(right1.mean()), float(right0.mean())
    reason = f"accuracy {a1:.3f} on {len(right1)} labelled vs champion {a0:.3f} on {len(right0)}"
    reason += f" (max drop {max_drop}, p={check.values['p_value']:.3g})"
    return GateCheck.of(
        "accuracy", check.passed, reason, canary=a1, champion=a0, p_value=check.values["p_value"]
    )


def _prediction_shift(canary: pd.DataFrame, champion: pd.DataFrame) -> GateCheck:
    """Reported, never blocking: a better model is expected to answer differently."""
    counts = pd.crosstab(
        np.r_[np.ones(len(canary)), np.zeros(len(champion))],
        np.r_[canary["prediction"].to_numpy(), champion["prediction"].to_numpy()],
    )
    share1 = counts.loc[1.0] / counts.loc[1.0].sum()
    share0 = counts.loc[0.0] / counts.loc[0.0].sum()
    distance = float(0.5 * np.abs(share1 - share0).sum())
    p_value = float(stats.chi2_contingency(counts.to_numpy())[1]) if counts.shape[1] > 1 else 1.0
    mean1, mean0 = float(canary["confidence"].mean()), float(champion["confidence"].mean())
    reason = (
        f"predicted-label distributions differ by {distance:.3f} total variation "
        f"(chi-square p={p_value:.3g}); mean confidence {mean1:.3f} vs {mean0:.3f}"
    )
    return GateCheck.of(
        "prediction_shift",
        True,
        reason,
        distance=distance,
        p_value=p_value,
        canary_confidence=mean1,
        champion_confidence=mean0,
    )
