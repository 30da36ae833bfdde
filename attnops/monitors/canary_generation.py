"""Generative canary vs champion on live traffic: may the canary write the replies?

Both versions answer the same kind of requests over the same period (sticky routing), so
their logged replies differ by the versions alone. The canary is judged on what a user
and the bill notice: server errors, replies the hallucination detector flags, PII its
replies leak, time to first token and between tokens, and tokens per reply. Each check
fails only on a difference the data supports (a one-sided test against a margin, or the
lower confidence bound of a ratio), as classification's canary does.

Limits are the spec's `release` section, read as for classification
(`max_unsupported_assertion_increase` is the hallucination margin: the unsupported
assertion is classification's hallucination), plus `generation_gate.
max_output_tokens_increase` for tokens per reply, the one figure classification lacks.

The detector scores replies off the request path, so the newest rows may not be scored
yet (NULL flag): they are left out of the rate and counted in its reason. Until the canary
has `release.canary_window` requests, and both sides that many scored replies, the decision
is to keep observing, not a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from attnops.monitors.canary import CanaryDecision, p95_ratio_check, rate_increase_check
from attnops.monitors.checks import GateCheck
from attnops.spec import PipelineSpec

SERVER_ERROR = 500
"""Statuses from here up are the server's failures; 4xx are the client's (bad input)."""


@dataclass(frozen=True, kw_only=True)
class GenerationCanaryDecision(CanaryDecision):
    """A canary decision that may also say: not enough data yet, keep observing."""

    @property
    def keep_observing(self) -> bool:
        """Every failed check only waits for more traffic or scores (none found a problem)."""
        failed = self.failed_checks
        return bool(failed) and all(check.values.get("waiting") for check in failed)

    def to_dict(self) -> dict[str, object]:
        return super().to_dict() | {"keep_observing": self.keep_observing}


def compare_generation_canary(
    canary: pd.DataFrame,
    champion: pd.DataFrame,
    spec: PipelineSpec,
    *,
    canary_version: str | None = None,
    champion_version: str | None = None,
) -> GenerationCanaryDecision:
    """Judge the canary's logged replies against the champion's from the same period.

    Args:
        canary, champion: generation-log rows (`GenerationLogReader.window`): `status`,
            `hallucination_flag` (None until scored), `output_pii_leaks` ("" = none, None =
            not checked), `ttft_ms`, `itl_ms` (None below 2 output tokens), `output_tokens`,
            `version`.
        spec: the pipeline spec; `release` holds the limits, `gate.confidence` the level
            of the one-sided tests.
        canary_version, champion_version: shown in the decision; default: the frames'
            `version` column.

    Returns:
        The decision: `promote`, or `keep_observing` (too little traffic or too few scored
        replies, and nothing failed), or neither (roll back); every check's figures.
    """
    release, confidence = spec.release, spec.gate.confidence
    versions = (_version(canary, canary_version), _version(champion, champion_version))
    enough = release.canary_window
    if len(canary) < enough or len(champion) < enough:
        reason = (
            f"not enough canary traffic: canary {len(canary)} and champion {len(champion)} "
            f"requests in this period, {enough} each needed (release.canary_window); "
            "keep observing"
        )
        traffic = GateCheck.of(
            "canary_traffic",
            False,
            reason,
            canary=len(canary),
            champion=len(champion),
            waiting=True,
        )
        return GenerationCanaryDecision(canary=versions[0], champion=versions[1], checks=[traffic])
    alpha = 1 - confidence
    ok1, ok0 = (frame[frame["status"] == 200] for frame in (canary, champion))
    errors = rate_increase_check(
        "error_rate",
        canary["status"] >= SERVER_ERROR,
        champion["status"] >= SERVER_ERROR,
        release.max_error_rate_increase,
        alpha,
    )
    checks = [
        replace(errors, reason=f"server errors (5xx): {errors.reason}"),
        _hallucination(ok1, ok0, release.max_unsupported_assertion_increase, alpha, enough),
        _pii_leaks(ok1, ok0, release.max_pii_share_increase, alpha),
        *(
            _p95(name, ok1, ok0, column, release.max_latency_increase, confidence)
            for name, column in (("ttft_ms_p95", "ttft_ms"), ("inter_token_ms_p95", "itl_ms"))
        ),
        _output_tokens(ok1, ok0, spec.generation_gate.max_output_tokens_increase, confidence),
    ]
    return GenerationCanaryDecision(canary=versions[0], champion=versions[1], checks=checks)


def _version(frame: pd.DataFrame, given: str | None) -> str:
    if given is not None:
        return given
    return str(frame["version"].iloc[-1]) if len(frame) else "unknown"


def _hallucination(
    ok1: pd.DataFrame, ok0: pd.DataFrame, max_increase: float, alpha: float, enough: int
) -> GateCheck:
    """Detector-flagged share of answered replies; unscored replies are left out and counted."""
    flags1, flags0 = (frame["hallucination_flag"].dropna().astype(bool) for frame in (ok1, ok0))
    pending1, pending0 = len(ok1) - len(flags1), len(ok0) - len(flags0)
    unscored = f"{pending1} canary and {pending0} champion replies not scored yet"
    if len(flags1) < enough or len(flags0) < enough:
        reason = (
            f"the detector has scored {len(flags1)} canary and {len(flags0)} champion replies, "
            f"{enough} each needed (release.canary_window); keep observing"
        )
        return GateCheck.of(
            "hallucination_rate",
            False,
            reason,
            canary_scored=len(flags1),
            champion_scored=len(flags0),
            waiting=True,
        )
    check = rate_increase_check("hallucination_rate", flags1, flags0, max_increase, alpha)
    p1, p0, p_value = (check.values[k] for k in ("canary", "champion", "p_value"))
    reason = (
        f"the detector flagged {p1:.1%} of {len(flags1)} canary replies vs {p0:.1%} of "
        f"{len(flags0)} champion replies (max +{max_increase:.0%}, p={p_value:.3g}; {unscored})"
    )
    return GateCheck.of(
        "hallucination_rate",
        check.passed,
        reason,
        **check.values,
        canary_scored=len(flags1),
        champion_scored=len(flags0),
        canary_unscored=pending1,
        champion_unscored=pending0,
    )


def _pii_leaks(
    ok1: pd.DataFrame, ok0: pd.DataFrame, max_increase: float, alpha: float
) -> GateCheck:
    """Replies with PII that was not in their input (unchecked replies left out)."""
    leaks1, leaks0 = (frame["output_pii_leaks"].dropna().astype(str) for frame in (ok1, ok0))
    if not len(leaks1) or not len(leaks0):
        reason = (
            f"{len(leaks1)} canary and {len(leaks0)} champion replies checked for PII leaks; "
            "not compared"
        )
        return GateCheck.of("pii_leaks", True, reason)
    check = rate_increase_check(
        "pii_leaks", leaks1.str.strip() != "", leaks0.str.strip() != "", max_increase, alpha
    )
    p1, p0, p_value = (check.values[k] for k in ("canary", "champion", "p_value"))
    reason = (
        f"{p1:.1%} of {len(leaks1)} canary replies leaked PII{_entities(leaks1)} vs "
        f"{p0:.1%} of {len(leaks0)} champion replies{_entities(leaks0)} "
        f"(max +{max_increase:.0%}, p={p_value:.3g})"
    )
    return GateCheck.of("pii_leaks", check.passed, reason, **check.values)


def _entities(leaks: pd.Series) -> str:
    """ " (EMAIL_ADDRESS x3, PHONE_NUMBER x1)" from comma-separated entity lists, or ""."""
    counts = leaks[leaks.str.strip() != ""].str.split(",").explode().str.strip().value_counts()
    return f" ({', '.join(f'{name} x{n}' for name, n in counts.items())})" if len(counts) else ""


def _p95(
    name: str,
    ok1: pd.DataFrame,
    ok0: pd.DataFrame,
    column: str,
    max_increase: float,
    confidence: float,
) -> GateCheck:
    values1, values0 = (frame[column].dropna().to_numpy(dtype=float) for frame in (ok1, ok0))
    return p95_ratio_check(name, values1, values0, max_increase, confidence)


def _output_tokens(
    ok1: pd.DataFrame, ok0: pd.DataFrame, max_increase: float, confidence: float
) -> GateCheck:
    """Mean output tokens per reply (what a reply costs): longer only when the lower bound of
    the ratio of means (bootstrap) exceeds the limit; shorter is reported, never blocking."""
    tokens1, tokens0 = (frame["output_tokens"].to_numpy(dtype=float) for frame in (ok1, ok0))
    if len(tokens1) < 5 or len(tokens0) < 5:
        return GateCheck.of("output_tokens", True, "fewer than 5 answered requests on a side")
    rng = np.random.default_rng(0)
    boot1 = tokens1[rng.integers(0, len(tokens1), (1000, len(tokens1)))].mean(axis=1)
    boot0 = tokens0[rng.integers(0, len(tokens0), (1000, len(tokens0)))].mean(axis=1)
    low = float(np.quantile(boot1 / np.maximum(boot0, 1e-9), 1 - confidence))
    mean1, mean0 = float(tokens1.mean()), float(tokens0.mean())
    reason = (
        f"canary replies average {mean1:.1f} output tokens ({len(tokens1)} replies) vs "
        f"champion {mean0:.1f} ({len(tokens0)}): x{mean1 / max(mean0, 1e-9):.2f} "
        f"({confidence:.0%} lower bound x{low:.2f}, max x{1 + max_increase:g}, "
        "generation_gate.max_output_tokens_increase)"
    )
    return GateCheck.of(
        "output_tokens", low <= 1 + max_increase, reason, canary=mean1, champion=mean0, lower=low
    )
