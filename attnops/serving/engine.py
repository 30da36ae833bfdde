"""One served model version: its model, tokenizer and reference, answering batches of texts.

A batch goes through `score_records`, the same function that built the version's
reference profile, so every logged record is comparable with that profile: the same
tokenizer statistics, the same projected embedding, attention entropy on a sampled share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attnops.models.records import TEXT_FEATURES, entropy_columns, score_records
from attnops.models.versions import LoadedVersion
from attnops.monitors.hallucination import UnsupportedAssertionDetector


@dataclass(frozen=True)
class Answer:
    """The model's answer to one text and what the inference log records about it."""

    label: str
    confidence: float
    unsupported: bool
    features: dict[str, float]
    """The `TEXT_FEATURES` of the input (n_tokens before truncation, truncated, ...)."""
    embedding: np.ndarray
    attention_entropy: np.ndarray | None
    """(layers, heads) mean attention entropy, for the sampled share of inputs only."""


class ModelSlot:
    """A loaded, verified version ready to serve (see `attnops.models.versions.load_version`).

    Args:
        loaded: the version, its tokenizer already checked against its hash tag.
        device: where the model runs.
        attention_share: share of inputs whose attention entropy is computed.
        unsupported_distance_quantile: the spec's monitoring setting, as in the monitors.
    """

    def __init__(
        self,
        loaded: LoadedVersion,
        *,
        device: torch.device,
        attention_share: float,
        unsupported_distance_quantile: float,
        forward_batch_size: int = 64,
    ) -> None:
        summary, self.projection = loaded.profile_summary()
        self.name, self.version = loaded.name, loaded.version
        self.tokenizer_sha256 = loaded.tokenizer_sha256
        self.label_names = loaded.label_names
        self.max_length = int(summary["max_length"])
        self.model = loaded.model.to(device).eval()
        self.tokenizer = loaded.tokenizer
        self.device = device
        self.attention_share = attention_share
        self.forward_batch_size = forward_batch_size
        self.layers = self.model.config.num_hidden_layers
        self.heads = self.model.config.num_attention_heads
        self.unsupported = UnsupportedAssertionDetector(
            loaded.reference_records(),
            out_of_scope_threshold=float(summary["out_of_scope_threshold"]),
            out_of_scope_label=summary.get("out_of_scope_label"),
            distance_quantile=unsupported_distance_quantile,
        )
        self._calls = 0

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text including special tokens, before truncation."""
        return [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]

    def answer(self, texts: list[str]) -> list[Answer]:
        """Run one batch; results in the order of `texts`."""
        self._calls += 1
        records = score_records(
            self.model,
            self.tokenizer,
            texts,
            label_names=self.label_names,
            max_length=self.max_length,
            projection=self.projection,
            device=self.device,
            attention_share=self.attention_share,
            seed=self._calls,  # a different sample each batch
            batch_size=self.forward_batch_size,
        )
        unsupported = self.unsupported.flags(records)
        columns = entropy_columns(self.layers, self.heads)
        entropy = records[columns].to_numpy() if columns[0] in records else None
        answers = []
        for i, row in enumerate(records.itertuples(index=False)):
            sampled = entropy is not None and not np.isnan(entropy[i]).any()
            answers.append(
                Answer(
                    label=row.prediction,
                    confidence=float(row.confidence),
                    unsupported=bool(unsupported[i]),
                    features={k: getattr(row, k) for k in TEXT_FEATURES},
                    embedding=row.embedding,
                    attention_entropy=(
                        entropy[i].reshape(self.layers, self.heads).astype(np.float32)
                        if sampled
                        else None
                    ),
                )
            )
        return answers
