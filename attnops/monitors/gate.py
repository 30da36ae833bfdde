"""The release gate: may this candidate version go to canary?

Both versions are judged on the same evidence gathered in the same gate run: predictions
on the same test split, latency measured on the same machine moments apart. With a
champion, quality is a paired test (a candidate is neither accepted nor rejected on noise);
without one, absolute limits apply. Every check returns its numbers and a sentence a
reviewer can act on; the decision passes only when every check does. What the answers are
worth is in `gate_quality`; what serving the candidate costs and risks in `gate_operational`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd

from attnops.monitors.checks import Decision, GateCheck, VersionEvidence
from attnops.monitors.gate_operational import (
    attention_check,
    performance_checks,
    tokenizer_check,
    unsupported_check,
)
from attnops.monitors.gate_quality import (
    Answers,
    baseline_check,
    calibration_check,
    champion_checks,
    lost_classes_check,
    quality_floor_check,
)
from attnops.spec import GateSpec


@dataclass(frozen=True, kw_only=True)
class GateDecision(Decision):
    candidate: str
    champion: str | None
    verdict: str
    """Quality vs champion: better, worse, no_difference, not_comparable or no_champion."""

    @property
    def passed_note(self) -> str:
        return f"checks passed; quality vs champion: {self.verdict}"

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "candidate": self.candidate,
            "champion": self.champion,
            "verdict": self.verdict,
            "reasons": self.reasons(),
            "checks": [asdict(c) for c in self.checks],
        }


def decide(
    candidate: VersionEvidence,
    champion: VersionEvidence | None,
    gate: GateSpec,
    *,
    label_names: Sequence[str],
    slice_columns: Sequence[str],
    ece_bins: int = 15,
    baseline: pd.DataFrame | None = None,
) -> GateDecision:
    """Run every gate check on the candidate (against the champion when there is one).

    Args:
        baseline: the TF-IDF baseline's predictions (`label`, `prediction`) on the same
            test rows as the candidate's; required unless `gate.min_baseline_margin` is null.

    Raises:
        ValueError: the versions (or the baseline) were scored on different test inputs, or
            the spec asks for the baseline check and no baseline predictions were given.
    """
    answers = Answers.of(candidate.predictions, label_names)
    checks = [quality_floor_check(answers, gate)]
    if gate.min_baseline_margin is not None:
        if baseline is None:
            raise ValueError(
                "gate.min_baseline_margin is set but no baseline predictions were gathered; "
                "score the TF-IDF baseline on the test split, or set it to null"
            )
        checks.append(baseline_check(answers, baseline, gate))
    verdict = "no_champion"
    if champion is not None:
        verdict, versus = champion_checks(answers, candidate, champion, slice_columns, gate)
        checks += [*versus, lost_classes_check(candidate, champion)]
    checks.append(calibration_check(answers, gate, ece_bins))
    checks += performance_checks(candidate.performance, champion and champion.performance, gate)
    checks.append(unsupported_check(candidate, champion, answers.names, gate))
    checks.append(attention_check(candidate, champion, gate))
    checks.append(artifact_pii_check(candidate, gate))
    checks.append(tokenizer_check(candidate, champion, gate))
    return GateDecision(
        candidate=candidate.version,
        champion=champion.version if champion else None,
        checks=checks,
        verdict=verdict,
    )


def artifact_pii_check(candidate: VersionEvidence, gate: GateSpec) -> GateCheck:
    return GateCheck.of(
        "pii",
        not (gate.fail_on_pii and candidate.pii_findings),
        "PII in " + ", ".join(candidate.pii_findings)
        if candidate.pii_findings
        else "no PII in the model card, input example or reference profile",
        findings=candidate.pii_findings,
    )
