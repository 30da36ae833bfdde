"""The release gate for `task: generation` versions: may this reply writer go to canary?

The same `GateDecision` as classification, on a generator's evidence: per-input scores of
its outputs on the test inputs (ROUGE-L, the fitted detector's hallucination flag, output
tokens) and latency measured side by side in the gate run. With a champion decoded on the
same inputs, quality is paired per input (a bootstrap CI of the ROUGE-L difference, McNemar's
exact test on the hallucination flags); without one, absolute limits apply. Against the
untuned base model decoded on the same inputs, fine-tuning must have paid off. What serving
the candidate costs and risks (PII leaks, output length, latency, tokenizer, attention) is
in `gate_generation_operational`; the quality checks are in `gate_generation_quality`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from attnops.monitors.checks import GateCheck
from attnops.monitors.gate import GateDecision
from attnops.monitors.gate_generation_operational import operational_checks
from attnops.monitors.gate_generation_quality import (
    base_checks,
    hallucination_check,
    rouge_l_floor_check,
    rouge_l_vs_champion_check,
)
from attnops.spec import GateSpec
from attnops.spec_generation import GenerationGateSpec

REQUIRED_COLUMNS = ("source", "context", "output", "output_tokens", "rouge_l", "hallucinated")


@dataclass(frozen=True)
class GenerationEvidence:
    """What the gate knows about one generation version.

    Attributes:
        per_input: one row per test input, in the same order for every version in the gate
            run (attnops.models.generation.evaluate): at least `REQUIRED_COLUMNS`, and
            `baseline_rouge_l` and `baseline_hallucinated` when the untuned base
            model was decoded on the same inputs.
        performance: measured in this gate run: `ttft_ms` (time to first token) and
            `inter_token_ms` (each request's mean gap between output tokens), one value per
            request, request i the same input for every version (paired by position);
            `load` as `time_side_by_side` reports it; and optionally
            `wall_ttft_ms` / `wall_inter_token_ms` when the samples are not wall time.
        attention: the `attention` section of the version's evaluation (per-head
            `entropy`, `importance`, `collapsed_heads`, as classification's) when measured.
        pii_findings: "artifact: ENTITY" for each PII hit in the version's text artifacts.
    """

    version: str
    per_input: pd.DataFrame
    performance: dict[str, object]
    attention: dict[str, object]
    tokenizer_sha256: str
    pii_findings: list[str] = field(default_factory=list)


def decide_generation(
    candidate: GenerationEvidence,
    champion: GenerationEvidence | None,
    gate: GenerationGateSpec,
    *,
    shared: GateSpec,
) -> GateDecision:
    """Run every generation gate check on the candidate (against the champion if any).

    Args:
        gate: the spec's `generation_gate` section.
        shared: the spec's `gate` section, for what both tasks share: `confidence`, the
            tokenizer, attention health and PII in artifacts.

    Returns:
        The decision; its verdict (better, worse, no_difference from the paired ROUGE-L CI;
        not_comparable when the versions were decoded on different inputs; no_champion).

    Raises:
        ValueError: a per-input table is empty or lacks a column the checks need.
    """
    frame = _validated(candidate)
    checks = [rouge_l_floor_check(frame, gate)]
    verdict, paired = "no_champion", None
    if champion is not None:
        mismatch = input_mismatch(frame, _validated(champion))
        if mismatch:
            verdict = "not_comparable"
            checks.append(
                GateCheck.of(
                    "same_inputs",
                    False,
                    f"v{candidate.version} and v{champion.version} were not decoded on the same "
                    f"inputs ({mismatch}); paired comparisons need both versions on the same "
                    "test inputs in the same order: re-run the gate evaluation for both",
                )
            )
        else:
            paired = champion.per_input.reset_index(drop=True)
            verdict, versus = rouge_l_vs_champion_check(frame, paired, gate, shared.confidence)
            checks.append(versus)
    checks.append(hallucination_check(frame, paired, gate, shared.confidence))
    checks += base_checks(frame, gate, shared.confidence)
    checks += operational_checks(candidate, champion, paired, gate, shared)
    return GateDecision(
        candidate=candidate.version,
        champion=champion.version if champion else None,
        checks=checks,
        verdict=verdict,
    )


def _validated(evidence: GenerationEvidence) -> pd.DataFrame:
    frame = evidence.per_input
    missing = [c for c in REQUIRED_COLUMNS if c not in frame]
    if missing or frame.empty:
        problem = f"lacks column(s) {', '.join(missing)}" if missing else "has no rows"
        raise ValueError(
            f"v{evidence.version}'s per-input evaluation {problem} (columns: "
            f"{', '.join(map(str, frame.columns))}); write it with "
            "attnops.models.generation.evaluate on a non-empty test split"
        )
    return frame.reset_index(drop=True)


def input_mismatch(candidate: pd.DataFrame, champion: pd.DataFrame) -> str | None:
    """How two per-input tables differ in their (source, context) inputs; None if they don't."""
    if len(candidate) != len(champion):
        return f"{len(candidate)} vs {len(champion)} inputs"
    differ = ~(
        candidate["source"].eq(champion["source"].to_numpy())
        & candidate["context"].eq(champion["context"].to_numpy())
    )
    if differ.any():
        first = int(np.flatnonzero(differ)[0])
        count = f"{int(differ.sum())} of {len(differ)}"
        return f"{count} (source, context) pairs differ, the first at row {first}"
    return None
