"""Gather a generative version's gate evidence from what its evaluation stored.

Decoding every test input again for both versions would cost minutes per version on a CPU;
the evaluation already decoded them (greedy, so the outputs are what the version writes) and
stored the per-input table with the version's own detector scores. Evaluations use the same
seeded sample of the test split, so two versions of one spec line up input by input; the
gate checks that they do (`input_mismatch`) before pairing them.
"""

from __future__ import annotations

import pandas as pd

from attnops.models.generation.evaluate import PER_INPUT
from attnops.models.versions import EVALUATION_JSON, LoadedVersion
from attnops.monitors.gate_evidence import pii_findings_in
from attnops.monitors.gate_generation import GenerationEvidence

EVALUATION_FOLDER = EVALUATION_JSON.split("/")[0]


def generation_evidence(
    loaded: LoadedVersion, artifact_texts: dict[str, list[str]]
) -> GenerationEvidence:
    """The version's stored per-input table and attention summary; PII in its artifacts.

    Performance is measured for all versions together (`time_generators_side_by_side`).
    """
    per_input = pd.read_parquet(loaded.folder / EVALUATION_FOLDER / PER_INPUT)
    return GenerationEvidence(
        version=loaded.version,
        per_input=per_input,
        performance={},
        attention=loaded.evaluation().get("attention", {}),
        tokenizer_sha256=loaded.tokenizer_sha256,
        # The stored texts are redacted; the model card and input example are not.
        pii_findings=pii_findings_in(artifact_texts, pd.DataFrame()),
    )
