"""Per-input records: what a model version saw and said, one row per input.

The reference profile (the test split, at registration) and every live window (the
inference log) are built by this one function, so drift checks compare like with like:
the version's own tokenizer statistics, its pooled embeddings (PCA-projected), its
prediction and confidence, its out-of-scope score, and attention entropy on a sampled
share of inputs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from attnops.models.attention import attention_entropy
from attnops.models.attention_columns import entropy_columns
from attnops.models.batching import Encoded, encode
from attnops.models.inference import predict
from attnops.models.ood import OUT_OF_SCOPE_SCORE, OutOfScopeDetector
from attnops.models.profile import EmbeddingProjection

_WORD = re.compile(r"\w+")


def text_features(tokenizer, texts: Sequence[str], encoded: Encoded) -> dict[str, np.ndarray]:
    """Length, token and character statistics of each input, through the model's tokenizer.

    `unk_rate` and `tokens_per_word` are tokenizer-level signals: text the vocabulary was
    not built for (new product names, another language, emoji) splits into more pieces
    or unknown tokens before any accuracy is lost.
    """
    n_special = len(tokenizer("")["input_ids"])  # [CLS] [SEP] for BERT
    unk = tokenizer.unk_token_id
    content = np.maximum(np.asarray(encoded.full_lengths) - n_special, 0)
    unknown = np.array([sum(1 for t in ids if t == unk) for ids in encoded.input_ids])
    words = np.array([len(_WORD.findall(text)) for text in texts])
    letters = np.array([sum(ch.isalpha() for ch in text) for text in texts])
    visible = np.array([sum(not ch.isspace() for ch in text) for text in texts])
    return {
        "text_chars": np.array([len(text) for text in texts]),
        "n_tokens": np.asarray(encoded.full_lengths),
        "truncated": encoded.truncated,
        "unk_rate": unknown / np.maximum(encoded.lengths - n_special, 1),
        "tokens_per_word": content / np.maximum(words, 1),
        "non_letter_share": 1.0 - letters / np.maximum(visible, 1),
    }


def score_records(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    label_names: Sequence[str],
    max_length: int,
    projection: EmbeddingProjection,
    device: torch.device,
    attention_share: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    out_of_scope: OutOfScopeDetector | None = None,
    bf16_on_cpu: bool = False,
) -> pd.DataFrame:
    """Run the model over `texts` and return one record per input.

    Columns: the `TEXT_FEATURES`, `prediction` (label name), `confidence`, `embedding`
    (projected pooled output, float32) and, when `attention_share` > 0, `l{i}h{j}`
    attention entropy on that seeded share of inputs (NaN elsewhere). With `out_of_scope`,
    `out_of_scope_score` (the detector's chosen score, from the output layer's input
    and the logits) and, when it holds several (at evaluation), `out_of_scope_score.<name>` for
    each. The text itself is not included: the caller decides whether and how (redacted)
    to keep it. Inputs run in length-sorted batches of `batch_size` (less padding; smaller
    suits a CPU), in bf16 as `predict` decides (`bf16_on_cpu`: the server's choice).
    """
    texts = list(texts)
    encoded = encode(tokenizer, texts, max_length)
    pad_id = tokenizer.pad_token_id
    scored = predict(
        model,
        encoded,
        pad_id=pad_id,
        device=device,
        batch_size=batch_size,
        with_embeddings=True,
        bf16_on_cpu=bf16_on_cpu,
    )
    frame = pd.DataFrame(text_features(tokenizer, texts, encoded))
    frame["prediction"] = np.asarray(label_names, dtype=object)[scored.labels]
    frame["confidence"] = scored.confidence.astype(np.float64)
    frame["embedding"] = list(projection.transform(scored.embeddings).astype(np.float32))
    if out_of_scope is not None:
        scores = out_of_scope.scores(scored.logits, scored.features)
        frame[OUT_OF_SCOPE_SCORE] = scores[out_of_scope.chosen]
        if len(scores) > 1:
            for name, values in scores.items():
                frame[f"{OUT_OF_SCOPE_SCORE}.{name}"] = values
    if attention_share > 0 and texts:
        rng = np.random.default_rng(seed)
        chosen = np.flatnonzero(rng.random(len(texts)) < attention_share)
        layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
        values = np.full((len(texts), layers * heads), np.nan, dtype=np.float32)
        if len(chosen):
            subset = Encoded([encoded.input_ids[i] for i in chosen], None, [0] * len(chosen))
            entropy = attention_entropy(model, subset, pad_id=pad_id, device=device)
            values[chosen] = entropy.reshape(len(chosen), -1)
        entropy_frame = pd.DataFrame(values, columns=entropy_columns(layers, heads))
        frame = pd.concat([frame, entropy_frame], axis=1)  # one concat, not 72 inserts
    return frame
