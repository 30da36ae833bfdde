"""Is a window's share of outputs leaking PII above what its version was admitted with?

The gate admits a generative version with at most `generation_gate.max_pii_leaks` leaking
outputs (default none) among its evaluation outputs, and the reference profile keeps which
of them leaked. The live rate is tested against the reference's rate plus the check's
floor with a one-sided exact binomial test: an alarm says the window leaks more than the
admitted rate by at least the floor, with a false-alarm probability of at most alpha when
it does not. The reference's rate is taken as the admitted standard, not estimated with
its uncertainty: from tens of outputs without a leak, a posterior would tolerate one reply
in seven leaking before it could tell.
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


def rate_check(
    name: str, reference: FlagCount, window: FlagCount, *, alpha: float, floor: float
) -> tuple[CheckResult, float]:
    """The check of the window's rate against the reference's plus `floor`, and its p-value.

    The statistic is the increase of the rate (window minus reference); its threshold is
    the largest increase that is not yet significant at `alpha`, so the check is
    significant exactly when the window's count reaches the critical count.

    Raises:
        ValueError: the window or the reference judged no output.
    """
    if window.judged == 0 or reference.judged == 0:
        side = "window" if window.judged == 0 else "reference"
        raise ValueError(f"{name}: the {side} has no judged output to compare")
    admitted = min(reference.rate + floor, 1.0)
    tail = stats.binom(window.judged, admitted).sf(np.arange(window.judged + 1) - 1)
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
