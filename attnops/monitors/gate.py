"""The release gate: may this candidate version go to canary?

Both versions are judged on the same evidence gathered in the same gate run: predictions
on the same test split, latency measured on the same machine moments apart. With a
champion, quality is a paired test (a candidate is neither accepted nor rejected on noise);
without one, absolute limits apply. Every check returns its numbers and a sentence a
reviewer can act on; the decision passes only when every check does. Quality checks are
here; what serving the candidate costs and risks is in `gate_operational`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from attnops.models.metrics import classification_metrics, expected_calibration_error
from attnops.monitors.checks import GateCheck, VersionEvidence, checks_table
from attnops.monitors.gate_operational import (
    attention_check,
    performance_checks,
    tokenizer_check,
    unsupported_check,
)
from attnops.monitors.significance import compare_paired, mcnemar_exact
from attnops.spec import GateSpec


@dataclass(frozen=True)
class GateDecision:
    candidate: str
    champion: str | None
    checks: list[GateCheck]
    verdict: str
    """Quality vs champion: better, worse, no_difference, not_comparable or no_champion."""

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed_checks(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def reasons(self) -> str:
        """One line for the version tag: the failed checks' reasons, or that all passed."""
        failed = self.failed_checks
        if not failed:
            return f"all {len(self.checks)} checks passed; quality vs champion: {self.verdict}"
        return " | ".join(f"{c.name}: {c.reason}" for c in failed)

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "candidate": self.candidate,
            "champion": self.champion,
            "verdict": self.verdict,
            "reasons": self.reasons(),
            "checks": [asdict(c) for c in self.checks],
        }

    def table(self) -> str:
        return checks_table(self.checks)


def decide(
    candidate: VersionEvidence,
    champion: VersionEvidence | None,
    gate: GateSpec,
    *,
    label_names: Sequence[str],
    slice_columns: Sequence[str],
    ece_bins: int = 15,
) -> GateDecision:
    """Run every gate check on the candidate (against the champion when there is one)."""
    names = list(label_names)
    cand_in = _in_scope(candidate.predictions, names)
    y_true = _codes(cand_in["label"], names)
    y_cand = _codes(cand_in["prediction"], names)
    quality = classification_metrics(y_true, y_cand, names)
    checks = [
        GateCheck.of(
            "quality_floor",
            quality["macro_f1"] >= gate.min_macro_f1,
            f"macro-F1 {quality['macro_f1']:.4f} (floor {gate.min_macro_f1})",
            macro_f1=quality["macro_f1"],
            accuracy=quality["accuracy"],
        )
    ]
    verdict = "no_champion"
    if champion is not None:
        champ_in = _in_scope(champion.predictions, names)
        if not champ_in["label"].equals(cand_in["label"]):
            raise ValueError(
                f"v{candidate.version} and v{champion.version} were not scored on the same "
                "test inputs; a paired comparison needs both on the same split"
            )
        y_champ = _codes(champ_in["prediction"], names)
        added = sorted(set(candidate.label_names) - set(champion.label_names))
        removed = sorted(set(champion.label_names) - set(candidate.label_names))
        if added or removed:
            # Different label sets have no common macro-F1: a person must decide.
            verdict = "not_comparable"
            checks.append(
                GateCheck.of(
                    "quality_vs_champion",
                    False,
                    f"label set changed (added: {', '.join(added) or 'none'}; removed: "
                    f"{', '.join(removed) or 'none'}); a paired test needs one label set, "
                    "so the change needs a human decision",
                    added=added,
                    removed=removed,
                )
            )
        else:
            comparison = compare_paired(
                y_true,
                y_cand,
                y_champ,
                n_classes=len(names),
                margin=gate.non_inferiority_margin,
                confidence=gate.confidence,
            )
            verdict = comparison.verdict
            reason = f"{comparison.verdict.replace('_', ' ')}: {comparison.reason()}"
            if verdict == "no_difference" and not comparison.non_inferior:
                reason = (
                    f"inconclusive, not shown to be within {comparison.margin} of the champion: "
                    f"{comparison.reason()}; the test split is too small for this margin "
                    "(enlarge it, or widen gate.non_inferiority_margin)"
                )
            checks.append(
                GateCheck.of(
                    "quality_vs_champion",
                    comparison.non_inferior,
                    reason,
                    **asdict(comparison),
                )
            )
            checks.append(_slices(cand_in, champ_in, y_true, y_cand, y_champ, slice_columns, gate))
    ece, _ = expected_calibration_error(
        cand_in["confidence"].to_numpy(), y_cand == y_true, ece_bins
    )
    checks.append(
        GateCheck.of(
            "calibration", ece <= gate.max_ece, f"ECE {ece:.4f} (max {gate.max_ece})", ece=ece
        )
    )
    checks += performance_checks(candidate.performance, champion and champion.performance, gate)
    checks.append(unsupported_check(candidate, champion, names, gate))
    checks.append(attention_check(candidate, champion, gate))
    checks.append(
        GateCheck.of(
            "pii",
            not (gate.fail_on_pii and candidate.pii_findings),
            "PII in " + ", ".join(candidate.pii_findings)
            if candidate.pii_findings
            else "no PII in the model card, input example or reference profile",
            findings=candidate.pii_findings,
        )
    )
    checks.append(tokenizer_check(candidate, champion, gate))
    return GateDecision(
        candidate=candidate.version,
        champion=champion.version if champion else None,
        checks=checks,
        verdict=verdict,
    )


def _in_scope(predictions: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    return predictions[predictions["label"].isin(names)].reset_index(drop=True)


def _codes(values: pd.Series, names: list[str]) -> np.ndarray:
    return pd.Categorical(values, categories=names).codes.astype(np.int64)


def _slices(cand_in, champ_in, y_true, y_cand, y_champ, slice_columns, gate: GateSpec):
    """Block a significant accuracy drop larger than the limit on any slice large enough.

    Significance is judged at (1 - confidence) / number of slices tested (Bonferroni), so
    testing many slices does not make one of them fail by chance.
    """
    tested = []
    for column in slice_columns:
        if column in cand_in:
            values = cand_in[column].astype(str).to_numpy()
            for value in sorted(set(values)):
                if (values == value).sum() >= gate.min_slice_size:
                    tested.append((column, value, values == value))
    alpha = (1.0 - gate.confidence) / max(len(tested), 1)
    worst: dict[str, object] = {}
    regressions = []
    for column, value, mask in tested:
        acc_cand = float((y_cand[mask] == y_true[mask]).mean())
        acc_champ = float((y_champ[mask] == y_true[mask]).mean())
        p = mcnemar_exact(y_true[mask], y_cand[mask], y_champ[mask])
        drop = acc_champ - acc_cand
        row = {"slice": f"{column}={value}", "n": int(mask.sum()), "drop": drop, "p": p}
        if not worst or drop > worst["drop"]:
            worst = row
        if drop >= gate.max_slice_drop and p < alpha:
            regressions.append(
                f"{column}={value}: accuracy {acc_cand:.3f} vs {acc_champ:.3f} "
                f"(-{drop:.3f}, McNemar p={p:.3g}, n={int(mask.sum())})"
            )
    if regressions:
        reason = "significant regression on " + "; ".join(regressions)
    elif worst:
        reason = (
            f"no slice significantly worse by >= {gate.max_slice_drop}; largest drop "
            f"{worst['drop']:+.3f} on {worst['slice']} (p={worst['p']:.3g})"
        )
    else:
        reason = f"no slice with >= {gate.min_slice_size} inputs"
    return GateCheck.of("slices", not regressions, reason, worst=worst, regressions=regressions)
