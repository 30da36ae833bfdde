"""A check's verdict with its reason and numbers: what the gate and the canary return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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
