"""Is a window's share of flagged outputs above its reference's? A one-sided exact test.

A rate check (outputs the hallucination detector flags, outputs leaking PII) compares x of
n flagged in the window with k of m in the version's reference profile. The reference is
small (evaluation decodes tens of test inputs), so its rate is uncertain itself, and often
exactly zero: a bootstrap of the reference alone would then call a single flagged output
significant. So the reference rate gets its posterior, Beta(k + 1/2, m - k + 1/2)
(Jeffreys prior), and the window's count, under "the same rate as the reference", is
beta-binomial. The critical count is the smallest x whose upper tail is at most alpha, the
check's share of the monitor's false-alarm budget; a window alarms when its count reaches
it *and* the increase of the rate reaches the check's floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from attnops.monitors.drift import CheckResult

RATE_KIND = "rate increase"


@dataclass(frozen=True)
class FlagCount:
    """Outputs flagged of those judged; `pending` were not judged yet (excluded)."""

    flagged: int
    judged: int
    pending: int = 0

    @property
    def rate(self) -> float:
        return self.flagged / self.judged if self.judged else 0.0


def upper_tail(reference: FlagCount, n: int) -> np.ndarray:
    """P(X >= x) for x = 0..n flagged of n, at the reference's (uncertain) rate."""
    a, b = reference.flagged + 0.5, reference.judged - reference.flagged + 0.5
    return stats.betabinom(n, a, b).sf(np.arange(n + 1) - 1)


def rate_check(
    name: str, reference: FlagCount, window: FlagCount, *, alpha: float, floor: float
) -> tuple[CheckResult, float]:
    """The check of the window's rate against the reference's, and its p-value.

    The statistic is the increase of the rate (window minus reference); its threshold is
    the largest increase that is not yet significant at `alpha`, so the check is
    significant exactly when the window's count reaches the critical count. The effect
    size is the increase itself (an unbiased estimate of the difference of the rates).

    Raises:
        ValueError: the window or the reference judged no output.
    """
    if window.judged == 0 or reference.judged == 0:
        side = "window" if window.judged == 0 else "reference"
        raise ValueError(f"{name}: the {side} has no judged output to compare")
    tail = upper_tail(reference, window.judged)
    significant_counts = np.flatnonzero(tail <= alpha)
    # With no count significant (tiny windows), no increase can pass the threshold.
    critical = int(significant_counts[0]) if len(significant_counts) else window.judged + 1
    increase = window.rate - reference.rate
    check = CheckResult(
        name=name,
        kind=RATE_KIND,
        statistic=increase,
        threshold=(critical - 1) / window.judged - reference.rate,
        effect_size=max(increase, 0.0),
        floor=floor,
        n_reference=reference.judged,
        n_current=window.judged,
    )
    return check, float(tail[window.flagged])
