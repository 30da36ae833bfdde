"""The reference profile: what normal inputs and outputs look like for one model version.

Stored with the version, so later drift checks compare live traffic against the version's
test split (data it was neither trained nor tuned on), through the version's own eyes (its
tokenizer, its embeddings, its attention) rather than a second model's. Only the embedding
projection is fit on the validation split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROFILE_TABLE = "reference_profile.parquet"
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


def write_profile_summary(
    out_dir: Path, *, projection: EmbeddingProjection, summary: dict[str, object]
) -> Path:
    """Write the JSON summary live records are read against (with the PCA they need)."""
    path = out_dir / PROFILE_SUMMARY
    path.write_text(json.dumps({**summary, "embedding_projection": projection.to_dict()}))
    return path


def read_profile_summary(path: Path) -> tuple[dict[str, object], EmbeddingProjection]:
    """The summary written by `write_profile_summary` and its projection."""
    summary = json.loads(path.read_text())
    return summary, EmbeddingProjection.from_dict(summary.pop("embedding_projection"))
