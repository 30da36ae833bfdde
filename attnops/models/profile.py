"""The reference profile: what normal inputs and outputs look like for one model version.

Stored with the version, so later drift checks compare live traffic against the data the
version was validated on, through the version's own eyes (its tokenizer, its embeddings,
its attention) rather than a second model's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROFILE_TABLE = "reference_profile.parquet"
ATTENTION_TABLE = "reference_attention.parquet"
PROFILE_SUMMARY = "reference_profile.json"


@dataclass(frozen=True)
class EmbeddingProjection:
    """PCA projection of pooled hidden states to a compact width (fit on validation)."""

    mean: np.ndarray
    components: np.ndarray  # (width, hidden)

    @classmethod
    def fit(cls, embeddings: np.ndarray, width: int) -> EmbeddingProjection:
        mean = embeddings.mean(axis=0)
        _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
        return cls(mean=mean, components=vt[: min(width, len(vt))])

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        return (embeddings - self.mean) @ self.components.T

    def to_dict(self) -> dict[str, list]:
        return {"mean": self.mean.tolist(), "components": self.components.tolist()}

    @classmethod
    def from_dict(cls, raw: dict[str, list]) -> EmbeddingProjection:
        return cls(mean=np.asarray(raw["mean"]), components=np.asarray(raw["components"]))


def write_reference_profile(
    out_dir: Path,
    *,
    frame: pd.DataFrame,
    embeddings: np.ndarray,
    projection: EmbeddingProjection,
    per_example_entropy: np.ndarray,
    summary: dict[str, object],
) -> list[Path]:
    """Write the per-input table, the attention-entropy table and the JSON summary.

    Args:
        frame: one row per validation input: text_chars, n_tokens, truncated, label,
            prediction, confidence and any slice columns.
        embeddings: pooled hidden states of those inputs (projected here).
        projection: the PCA that live traffic must be projected with, stored in the summary.
        per_example_entropy: (probe examples, layers, heads) normalised attention entropy.
        summary: label names, thresholds, attention matrices and the like.
    """
    table = frame.copy()
    table["embedding"] = list(projection.transform(embeddings).astype(np.float32))
    paths = [out_dir / PROFILE_TABLE, out_dir / ATTENTION_TABLE, out_dir / PROFILE_SUMMARY]
    table.to_parquet(paths[0], index=False)
    _, layers, heads = per_example_entropy.shape
    columns = [f"l{layer}h{head}" for layer in range(layers) for head in range(heads)]
    pd.DataFrame(
        per_example_entropy.reshape(len(per_example_entropy), -1), columns=columns
    ).to_parquet(paths[1], index=False)
    paths[2].write_text(json.dumps({**summary, "embedding_projection": projection.to_dict()}))
    return paths
