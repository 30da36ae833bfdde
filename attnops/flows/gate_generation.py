"""The `gate` flow's steps for `task: generation` versions (see `flows.gate`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from attnops.flows.tasks import compute_task
from attnops.models import registry, versions
from attnops.models.generation.data import prompt_ids
from attnops.models.generation.latency import time_generators_side_by_side
from attnops.models.modeling import pick_device
from attnops.monitors.gate import GateDecision
from attnops.monitors.gate_generation import GenerationEvidence, decide_generation
from attnops.monitors.gate_generation_evidence import generation_evidence
from attnops.settings import Settings
from attnops.spec import PipelineSpec

LATENCY_PROMPTS = 8
"""Prompts timed per version at batch 1 (decoding is the slow part on a CPU)."""
LATENCY_NEW_TOKENS = 16
"""Tokens decoded per timed prompt: the first and enough gaps for an inter-token figure."""


@compute_task
def load_generator(spec: PipelineSpec, settings: Settings, version: str, scratch: Path):
    """Load the version (weights and tokenizer verified) and its stored evidence."""
    client = registry.client_for(settings)
    loaded = versions.load_version(client, spec.name, version, scratch)
    return loaded, generation_evidence(loaded, versions.artifact_texts(loaded))


@compute_task
def time_generators(spec: PipelineSpec, loaded: list, evidence: GenerationEvidence):
    """TTFT and inter-token latency of every version, request by request in turn."""
    device = pick_device(spec.training.device)
    table = evidence.per_input.head(LATENCY_PROMPTS)
    tokenizer = loaded[0].tokenizer
    prompts = [
        prompt_ids(tokenizer, spec.generation, s, c)
        for s, c in zip(table["source"], table["context"], strict=True)
    ]
    runs = [(version.model.to(device), version.tokenizer) for version in loaded]
    return time_generators_side_by_side(
        runs, prompts, max_new_tokens=LATENCY_NEW_TOKENS, device=device
    )


def judge_generation(
    spec: PipelineSpec, settings: Settings, candidate: str, champion: str | None, record
) -> GateDecision:
    """Decide on `candidate` against `champion` from their stored per-input evaluations and
    latency measured side by side now; `record(run_id, decision, folder)` stores it."""
    with tempfile.TemporaryDirectory(dir=settings.home) as scratch:
        scratch = Path(scratch)
        cand_loaded, cand = load_generator(spec, settings, candidate, scratch)
        loaded, evidence = [cand_loaded], [cand]
        if champion is not None:
            champ_loaded, champ = load_generator(spec, settings, champion, scratch)
            loaded.append(champ_loaded)
            evidence.append(champ)
        timings = time_generators(spec, loaded, cand)
        cand, *rest = [
            GenerationEvidence(**{**e.__dict__, "performance": t})
            for e, t in zip(evidence, timings, strict=True)
        ]
        decision = decide_generation(
            cand, rest[0] if rest else None, spec.generation_gate, shared=spec.gate
        )
        folder = scratch / "gate"
        folder.mkdir()
        cand.per_input.to_csv(folder / "candidate_per_input.csv", index=False)
        if rest:
            rest[0].per_input.to_csv(folder / "champion_per_input.csv", index=False)
        record(cand_loaded.run_id, decision, folder)
    return decision
