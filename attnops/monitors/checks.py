"""What the gate's checks take and return: a version's evidence, a check's verdict.

Plain data (numpy and pandas only), so judging evidence needs neither torch nor MLflow;
`gate_evidence` gathers it, and the canary returns the same `GateCheck`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class VersionEvidence:
    """What the gate knows about one version.

    Attributes:
        predictions: one row per test input (in and out of scope): `label`, `prediction`,
            `confidence`, `unsupported` (bool: an out-of-scope input labelled without the
            version's out-of-scope flag) and a column per slice (e.g. `length`, `channel`).
        performance: measured in this gate run: `latency_ms` (batch-1 milliseconds per
            request, timed in turn with the other version on the same inputs, so paired
            by position) and `model_size_mb`.
        attention: the `attention` section of the version's evaluation.json.
        pii_findings: "artifact: ENTITY" for each PII hit in the version's text artifacts.
        champion_test_predictions: like `predictions`, on the champion's own test inputs
            (from its stored reference profile), for both versions, when the candidate
            lacks some of the champion's classes: the candidate's test split has no inputs
            of a class it was not trained on, so only the champion's data shows what is lost.
    """

    version: str
    predictions: pd.DataFrame
    performance: dict[str, object]
    attention: dict[str, object]
    tokenizer_sha256: str
    label_names: tuple[str, ...]
    pii_findings: list[str] = field(default_factory=list)
    champion_test_predictions: pd.DataFrame | None = None


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    reason: str
    values: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, passed: bool, reason: str, **values) -> GateCheck:
        """A check with plain-Python values (numpy scalars converted), ready for JSON."""
        clean = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()}
        return cls(name=name, passed=bool(passed), reason=reason, values=clean)


def checks_table(checks: Sequence[GateCheck]) -> str:
    """Markdown table of checks, for the terminal, the version description and CI."""
    lines = ["| check | result | reason |", "|---|---|---|"]
    for c in checks:
        lines.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.reason} |")
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """Checks and their verdict, for the gate and the canary alike: it passes only when every
    check does; its reasons are the failed checks' (or a count of those that passed)."""

    checks: list[GateCheck]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed_checks(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def reasons(self) -> str:
        """One line for a tag or a log: the failed checks' reasons, or that all passed."""
        failed = self.failed_checks
        if not failed:
            return f"all {len(self.checks)} {self.passed_note}"
        return " | ".join(f"{c.name}: {c.reason}" for c in failed)

    @property
    def passed_note(self) -> str:
        return "checks passed"

    def table(self) -> str:
        return checks_table(self.checks)
