"""A generation monitor's verdict on one window: its checks, the rates behind the rate
checks, the alarm and its severity, as sentences, numbers and a table.

The checks themselves are computed by `generation_monitor.assess_generation_window`.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnops.monitors.drift import CheckResult, DriftResult
from attnops.monitors.flag_rate import FlagCount

HALLUCINATION_CHECK = "hallucination_rate"
PII_LEAK_CHECK = "pii_leak_rate"
RATE_CHECKS = (HALLUCINATION_CHECK, PII_LEAK_CHECK)


@dataclass(frozen=True)
class GenerationAssessment:
    """Every check of one window, the two rates behind the rate checks, and the verdict."""

    drift: DriftResult
    """All checks that ran, the rate checks among them (`RATE_CHECKS`)."""
    hallucinations: FlagCount
    reference_hallucinations: FlagCount
    pii_leaks: FlagCount
    reference_pii_leaks: FlagCount
    p_values: dict[str, float]
    """Per rate check that ran, its one-sided p-value."""
    n: int
    """Answered requests judged."""
    n_failed: int
    """Requests of the window that were not answered (status 4xx/5xx): left out."""

    @property
    def alarm(self) -> bool:
        """A check both significant and material."""
        return self.drift.drifted

    @property
    def severity(self) -> str:
        """`high` when the outputs themselves got worse (hallucinations or PII leaks),
        `low` when only prompts or output shape moved, `none` without an alarm."""
        if not self.alarm:
            return "none"
        return "high" if set(self.drift.drifted_checks) & set(RATE_CHECKS) else "low"

    def reasons(self) -> list[str]:
        """One sentence per alarming check."""
        reasons = []
        for check in self.drift.checks:
            if not check.drifted:
                continue
            if check.name in RATE_CHECKS:
                reasons.append(self._rate_sentence(check))
            else:
                reasons.append(check.reason())
        return reasons

    def notes(self) -> list[str]:
        """What the verdict did not cover: outputs not scored yet, failed requests."""
        notes = []
        if not self.hallucinations.judged:
            notes.append(
                "no output of the window is scored yet: its hallucination rate is unjudged"
            )
        elif self.hallucinations.pending:
            notes.append(
                f"{self.hallucinations.pending} of the window's {self.n} outputs are not "
                "scored by the hallucination detector yet and are left out of its rate"
            )
        if self.n_failed:
            notes.append(f"{self.n_failed} failed requests (no output) are left out")
        return notes

    def _rate_sentence(self, check: CheckResult) -> str:
        window, reference = self._counts(check.name)
        p_value = self.p_values[check.name]
        if check.name == HALLUCINATION_CHECK:
            return (
                f"hallucinations: the detector flags {window.rate:.1%} of the window's "
                f"{window.judged} scored outputs against {reference.rate:.1%} of the "
                f"reference's {reference.judged} (increase {check.effect_size:.3g}, floor "
                f"{check.floor:.3g}; its mean score rose {check.statistic:.3g}, significant "
                f"above {check.threshold:.3g} at this size, one-sided p = {p_value:.2g})"
            )
        return (
            f"PII leaks: {window.rate:.1%} of the window's {window.judged} outputs hold PII "
            f"that their input lacks, against {reference.rate:.1%} of the reference's "
            f"{reference.judged} (increase {check.statistic:.3g}, significant above "
            f"{check.threshold:.3g} at this size, one-sided p = {p_value:.2g}; floor "
            f"{check.floor:.3g})"
        )

    def _counts(self, name: str) -> tuple[FlagCount, FlagCount]:
        if name == HALLUCINATION_CHECK:
            return self.hallucinations, self.reference_hallucinations
        return self.pii_leaks, self.reference_pii_leaks

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow and the gauges."""
        flat = self.drift.metrics()
        for name in RATE_CHECKS:
            window, reference = self._counts(name)
            flat |= {f"{name}": window.rate, f"reference_{name}": reference.rate}
        return flat | {
            "hallucination_scored": float(self.hallucinations.judged),
            "hallucination_not_scored": float(self.hallucinations.pending),
            "window_records": float(self.n),
            "window_failed": float(self.n_failed),
            "alarm": float(self.alarm),
            "severity_high": float(self.severity == "high"),
        }

    def to_dict(self) -> dict[str, object]:
        """The judgement: per check statistic, threshold, effect size, floor, significant,
        material (alarm = both), the rates, and what was left out."""
        rates = {}
        for name in RATE_CHECKS:
            window, reference = self._counts(name)
            rates[name] = {
                "window": window.rate,
                "flagged": window.flagged,
                "judged": window.judged,
                "not_judged": window.pending,
                "reference": reference.rate,
                "reference_flagged": reference.flagged,
                "reference_judged": reference.judged,
                "p_value": self.p_values.get(name),
            }
        return {
            "alarm": self.alarm,
            "severity": self.severity,
            "reasons": self.reasons(),
            "notes": self.notes(),
            "rates": rates,
            "metrics": self.metrics(),
            "drift": self.drift.to_dict(),
        }

    def table(self) -> str:
        """Markdown table of the checks, for the terminal and the monitoring run."""
        lines = [
            "| check | statistic | threshold | effect size | floor | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.drift.checks:
            verdict = (
                "**ALARM**"
                if c.drifted
                else ("significant, not material" if c.significant else "ok")
            )
            lines.append(
                f"| {c.name} | {c.kind} {c.statistic:.4g} | {c.threshold:.4g} | "
                f"{c.effect_size:.3g} | {c.floor:.3g} | {verdict} |"
            )
        return "\n".join(lines)
