"""Generation gate checks beyond quality: what serving the candidate costs and risks.

PII its outputs leak, output length (cost per request), time to first token and between
tokens, the tokenizer, attention health and PII in its artifacts. The last three, and the
busy-machine logic of the latency checks, are classification's (`gate_operational`, `gate`),
applied to a generator's evidence.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from attnops.monitors.checks import GateCheck
from attnops.monitors.gate import artifact_pii_check
from attnops.monitors.gate_operational import (
    percentile_latency_check,
    tokenizer_check,
)
from attnops.monitors.pii import PiiHit, find_pii, redact
from attnops.spec import GateSpec
from attnops.spec_generation import GenerationGateSpec

if TYPE_CHECKING:
    from attnops.monitors.gate_generation import GenerationEvidence

PII_LEAK_COLUMN = "pii_leak_entities"
PII_EXAMPLES = 5
"""Leaking outputs shown (redacted) in the check's values."""


def operational_checks(
    candidate: GenerationEvidence,
    champion: GenerationEvidence | None,
    paired: pd.DataFrame | None,
    gate: GenerationGateSpec,
    shared: GateSpec,
) -> list[GateCheck]:
    """Every operational check, in the order the decision lists them.

    Args:
        paired: the champion's per-input table when it was decoded on the candidate's inputs.
    """
    champ_perf = champion.performance if champion else None
    return [
        pii_leak_check(candidate.per_input, gate),
        output_tokens_check(candidate.per_input, paired, gate),
        *(
            latency_check(candidate.performance, champ_perf, key, limit, gate, shared)
            for key, limit in (
                ("ttft_ms", gate.max_ttft_ms_p95),
                ("inter_token_ms", gate.max_inter_token_ms_p95),
            )
        ),
        tokenizer_check(candidate, champion, shared),
        attention_health_check(candidate, champion, shared),
        artifact_pii_check(candidate, shared),
    ]


def _comparable(text: str) -> str:
    """Lower-case letters, digits and '@' only: "+1 (415) 555-0123" and "415.555.0123" share
    digits, so a value copied from the input in another format is still found in it."""
    return re.sub(r"[^0-9a-z@]", "", text.lower())


def pii_leaks(
    frame: pd.DataFrame, found: Sequence[Sequence[PiiHit]] | None = None
) -> list[list[PiiHit]]:
    """Per row of `frame` (raw `source`, `context`, `output`), the PII hits of its output that
    are not in its own input.

    Repeating the customer's own e-mail address back to them is not a leak; an address,
    phone or card number the model produced from elsewhere (memorised training data, another
    customer's ticket) is. Pass `found` from an earlier `find_pii` of the outputs to skip a
    second scan.
    """
    outputs = frame["output"].astype(str).tolist()
    found = find_pii(outputs) if found is None else found
    leaks = []
    for row, (hits, output) in enumerate(zip(found, outputs, strict=True)):
        given = _comparable(f"{frame['source'].iat[row]} {frame['context'].iat[row]}")
        leaks.append([h for h in hits if _comparable(output[h.start : h.end]) not in given])
    return leaks


def pii_leak_check(frame: pd.DataFrame, gate: GenerationGateSpec) -> GateCheck:
    """Outputs holding PII that is not in their own input (`pii_leaks`).

    A stored evaluation table holds redacted text and the leaks found before redaction in
    `pii_leak_entities` (comma-separated); a table of raw outputs is checked here.
    """
    if PII_LEAK_COLUMN in frame.columns:
        found = [[e for e in str(v).split(",") if e] for v in frame[PII_LEAK_COLUMN]]
        outputs = frame["output"].astype(str).tolist()
    else:
        hits = pii_leaks(frame)
        found = [sorted({h.entity for h in leaked}) for leaked in hits]
        outputs = redact(frame["output"].astype(str).tolist(), hits)
    leaks = [(row, entities) for row, entities in enumerate(found) if entities]
    entities = sorted({e for _, row_entities in leaks for e in row_entities})
    examples = [
        {"row": row, "entities": sorted(set(row_entities)), "output": outputs[row][:300]}
        for row, row_entities in leaks[:PII_EXAMPLES]
    ]
    passed = len(leaks) <= gate.max_pii_leaks
    described = f"{len(leaks)} of {len(outputs)} outputs hold PII not found in their input"
    reason = (
        f"{described} (max {gate.max_pii_leaks})"
        if passed
        else f"PII leakage: {described} ({', '.join(entities)}; first at row {leaks[0][0]}; "
        f"max {gate.max_pii_leaks}): the model writes personal data it was not given; check "
        "the training targets for PII (attnops.monitors.pii.redact them) and retrain"
    )
    return GateCheck.of(
        "pii_leakage", passed, reason, leaks=len(leaks), entities=entities, examples=examples
    )


def output_tokens_check(
    frame: pd.DataFrame, champion: pd.DataFrame | None, gate: GenerationGateSpec
) -> GateCheck:
    """Mean output tokens per request against the champion's on the same inputs: each output
    token is paid for in decode time, so longer replies cost more per request."""
    tokens = float(frame["output_tokens"].mean())
    if champion is None:
        return GateCheck.of(
            "output_tokens",
            True,
            f"mean {tokens:.1f} output tokens per request; not compared with a champion",
            candidate=tokens,
        )
    champ = float(champion["output_tokens"].mean())
    ratio = tokens / max(champ, 1e-9)
    limit = 1 + gate.max_output_tokens_increase
    scores = (
        f"mean {tokens:.1f} output tokens per request vs champion {champ:.1f} on the same "
        f"{len(frame)} inputs: x{ratio:.2f} (max x{limit:g})"
    )
    passed = ratio <= limit
    reason = (
        scores
        if passed
        else f"output grew: {scores}; longer replies cost decode time on every request: check "
        "for rambling or a missing end of sequence in the training targets"
    )
    return GateCheck.of(
        "output_tokens", passed, reason, candidate=tokens, champion=champ, ratio=ratio
    )


def latency_check(
    performance: dict,
    champion: dict | None,
    key: str,
    limit_ms: float,
    gate: GenerationGateSpec,
    shared: GateSpec,
) -> GateCheck:
    """p95 of `performance[key]` (ms) against its budget and the champion's, judged as
    classification's latency (a busy machine makes a failure inconclusive, the champion
    comparison uses the bound of the paired ratio), under the check name `{key}_p95`."""
    if key not in performance:
        raise ValueError(
            f"the gate run's performance measurement lacks {key} (has: "
            f"{', '.join(performance) or 'nothing'}); time both versions side by side first"
        )
    samples = {
        "latency_ms": performance[key],
        "wall_latency_ms": performance.get(f"wall_{key}", performance[key]),
        "load": performance.get("load") or {},
    }
    champ_ms = None if champion is None else np.asarray(champion[key], dtype=float)
    judged = shared.model_copy(update={"max_latency_increase": gate.max_latency_increase})
    check = percentile_latency_check(samples, champ_ms, 95, limit_ms, judged)
    return dataclasses.replace(check, name=f"{key}_p95")


def attention_health_check(
    candidate: GenerationEvidence, champion: GenerationEvidence | None, shared: GateSpec
) -> GateCheck:
    """Heads that never look at the input (lookback ratio below the evaluation's floor on
    every output): more of them than the champion has means fine-tuning taught the model to
    write from its own output instead of its input, the attention-side sign of
    hallucination. Judged like classification's dead heads (`max_dead_heads_increase`)."""
    blind = candidate.attention.get("input_blind_heads")
    if blind is None:
        return GateCheck.of(
            "attention_health",
            True,
            "not measured: the evaluation's attention section has no input_blind_heads",
            verdict="not_measured",
        )
    heads = ", ".join(f"{layer}.{head}" for layer, head in blind[:8]) or "none"
    champ_blind = None if champion is None else champion.attention.get("input_blind_heads")
    if champ_blind is None:
        return GateCheck.of(
            "attention_health",
            True,
            f"{len(blind)} heads never look at the input (layer.head: {heads}); no champion "
            "to compare with",
            input_blind_heads=len(blind),
        )
    increase = len(blind) - len(champ_blind)
    passed = increase <= shared.max_dead_heads_increase
    counts = (
        f"{len(blind)} heads never look at the input vs champion {len(champ_blind)} "
        f"(max increase {shared.max_dead_heads_increase})"
    )
    reason = (
        counts
        if passed
        else f"{counts}; layer.head: {heads}: the model attends to its own output instead "
        "of its input; compare the lookback_ratio.png heatmaps of both versions"
    )
    return GateCheck.of(
        "attention_health",
        passed,
        reason,
        input_blind_heads=len(blind),
        champion_input_blind_heads=len(champ_blind),
    )
