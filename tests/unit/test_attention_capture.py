"""Attention entropy read off the served (SDPA) pass equals the eager pass's, or is refused."""

from __future__ import annotations

import numpy as np
import torch

from attnops.models.attention import attention_entropy
from attnops.models.attention_capture import AttentionCapture
from attnops.models.batching import Encoded, encode
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier
from attnops.spec import ModelSpec
from tests.conftest import TINY_BERT

CPU = torch.device("cpu")
TEXTS = [
    "where is my order",
    "refund me now please, the parcel arrived broken and two weeks late",
    "hi",
    "I cannot log in since yesterday",
    "where is my order",  # a repeat of an expected input
    "change the delivery address of order 1234 to the office",
]


def _model():
    torch.manual_seed(0)
    return build_classifier(ModelSpec(config_overrides=TINY_BERT), ("a", "b")).eval()


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_entropy_of_chosen_inputs_in_padded_sorted_batches_equals_the_eager_pass(tokenizer):
    model = _model()
    encoded = encode(tokenizer, TEXTS, 32)
    capture = AttentionCapture.attach(model, encoded.input_ids[0], tokenizer.pad_token_id)
    assert capture is not None
    chosen = [1, 3, 4, 0]  # 4 and 0 are the same text
    capture.expect([encoded.input_ids[i] for i in chosen])
    predict(model, encoded, pad_id=tokenizer.pad_token_id, device=CPU, batch_size=4)
    got = capture.entropies()
    eager = attention_entropy(model, encoded, pad_id=tokenizer.pad_token_id, device=CPU)
    assert sorted(got) == [0, 1, 2, 3]
    for k, i in enumerate(chosen):
        np.testing.assert_allclose(got[k], eager[i], atol=1e-5)
    assert capture.entropies() == {}  # forgotten once read


def test_a_model_the_capture_gets_wrong_is_refused_and_keeps_no_hooks(tokenizer, monkeypatch):
    model = _model()
    ids = encode(tokenizer, TEXTS[:1], 32).input_ids[0]
    one = Encoded([ids], None, [len(ids)])
    eager = attention_entropy(model, one, pad_id=0, device=CPU)  # transformers adds its hooks
    before = _hooks(model)
    monkeypatch.setattr(AttentionCapture, "_entropy", staticmethod(lambda q, k, layer: q[0, :4]))
    assert AttentionCapture.attach(model, ids, tokenizer.pad_token_id) is None
    assert _hooks(model) == before
    np.testing.assert_array_equal(attention_entropy(model, one, pad_id=0, device=CPU), eager)
