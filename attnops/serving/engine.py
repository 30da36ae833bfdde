"""The served versions: each one's model, tokenizer and reference, answering batches of texts.

A batch goes through `score_records`, the same function that built the version's
reference profile, so every logged record is comparable with that profile: the same
tokenizer statistics, the same projected embedding, attention entropy on a sampled share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnops.models import registry
from attnops.models.aliases import CANARY, CHAMPION, resolve
from attnops.models.attention_columns import entropy_columns
from attnops.models.modeling import pick_device
from attnops.models.ood import load_detector
from attnops.models.record_columns import TEXT_FEATURES
from attnops.models.records import score_records
from attnops.models.threads import use_threads
from attnops.models.versions import REFERENCE_FOLDER, LoadedVersion, load_version
from attnops.monitors.hallucination import UnsupportedAssertionDetector
from attnops.serving.log_schema import LogRecord
from attnops.settings import Settings
from attnops.spec import PipelineSpec


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
        forward_batch_size: inputs per forward pass (`serving.forward_batch_size`).
    """

    def __init__(
        self,
        loaded: LoadedVersion,
        *,
        device: torch.device,
        attention_share: float,
        unsupported_distance_quantile: float,
        forward_batch_size: int,
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
        # The version's own out-of-scope score, as its evaluation measured it.
        self.out_of_scope = load_detector(loaded.folder / REFERENCE_FOLDER)
        self.unsupported = UnsupportedAssertionDetector.from_summary(
            loaded.reference_records(), summary, unsupported_distance_quantile
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
            out_of_scope=self.out_of_scope,
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

    def log_record(
        self, request_id: str, route: str, text: str, latency_ms: float, a: Answer | None
    ) -> LogRecord:
        """The log record of one request; `a` None for a request the model failed (status 500)."""
        if a is None:
            answered = {
                "prediction": "",
                # No answer, no confidence: 0, not NaN (SQLite stores NaN as NULL, which the
                # NOT NULL column refuses); every reader leaves status != 200 out.
                "confidence": 0.0,
                "n_tokens": 0,
                "truncated": False,
                "text_chars": len(text),
                "unk_rate": 0.0,
                "tokens_per_word": 0.0,
                "non_letter_share": 0.0,
                "unsupported": False,
                "embedding": np.zeros(0, dtype=np.float32),
                "status": 500,
            }
        else:
            f = a.features
            answered = {
                "prediction": a.label,
                "confidence": a.confidence,
                "n_tokens": int(f["n_tokens"]),
                "truncated": bool(f["truncated"]),
                "text_chars": int(f["text_chars"]),
                "unk_rate": float(f["unk_rate"]),
                "tokens_per_word": float(f["tokens_per_word"]),
                "non_letter_share": float(f["non_letter_share"]),
                "unsupported": a.unsupported,
                "embedding": a.embedding,
                "attention_entropy": a.attention_entropy,
            }
        return LogRecord(
            request_id=request_id,
            ts=time.time(),
            model_name=self.name,
            version=self.version,
            route=route,
            text=text,
            latency_ms=latency_ms,
            **answered,
        )


class ServedVersions:
    """The slots being served, swapped whole on reload."""

    def __init__(self, spec: PipelineSpec, settings: Settings, scratch: Path) -> None:
        self.spec, self.settings, self.scratch = spec, settings, scratch
        self.slots: dict[str, ModelSlot] = {}
        self.device = pick_device(spec.training.device)
        # Before the model thread's first operator: a thread keeps the count it started with.
        use_threads(spec.training.num_threads, stage="serving")

    def load(self) -> dict[str, str | None]:
        """Read the `champion` and `canary` aliases and load what changed (blocking).

        Raises:
            LookupError: there is no champion to serve.
            ValueError: a version's tokenizer does not match its tag (nothing is swapped).
        """
        client = registry.client_for(self.settings)
        name = self.spec.name
        fresh: dict[str, ModelSlot] = {}
        for route in (CHAMPION, CANARY):
            mv = resolve(client, name, route)
            if mv is None:
                if route == CHAMPION:
                    raise LookupError(
                        f"model '{name}' has no champion; promote a version first "
                        "(attnops release, or the demo)"
                    )
                continue
            current = self.slots.get(route)
            if current is not None and current.version == str(mv.version):
                fresh[route] = current
                continue
            same = next((s for s in self.slots.values() if s.version == str(mv.version)), None)
            fresh[route] = same or self._load_slot(client, str(mv.version))
        self.slots = fresh  # one assignment: a request sees the old set or the new one
        return {route: (s.version if s else None) for route, s in self.routes().items()}

    def routes(self) -> dict[str, ModelSlot | None]:
        return {CHAMPION: self.slots.get(CHAMPION), CANARY: self.slots.get(CANARY)}

    def run(self, route: str, texts: list[str]) -> list[tuple[ModelSlot, Answer]]:
        """On the model thread: the route's slot (the champion if the canary just left)."""
        slots = self.slots
        slot = slots.get(route) or slots[CHAMPION]
        return [(slot, answer) for answer in slot.answer(texts)]

    def _load_slot(self, client, version: str) -> ModelSlot:
        loaded = load_version(client, self.spec.name, version, self.scratch)
        return ModelSlot(
            loaded,
            device=self.device,
            attention_share=self.spec.serving.attention_sample_share,
            unsupported_distance_quantile=self.spec.monitoring.unsupported_distance_quantile,
            forward_batch_size=self.spec.serving.forward_batch_size,
        )
