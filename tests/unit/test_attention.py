"""Attention health on tiny models whose attention we shape by hand."""

import numpy as np
import torch

from attnops.models.attention import attention_entropy, attention_report, head_importance
from attnops.models.attention_columns import entropy_columns, entropy_head
from attnops.models.batching import encode
from attnops.models.modeling import build_classifier
from attnops.spec import ModelSpec
from tests.conftest import TINY_BERT

CPU = torch.device("cpu")
HEAD_DIM = TINY_BERT["hidden_size"] // TINY_BERT["num_attention_heads"]
TEXTS = ["where is my order", "refund me now please", "the parcel arrived broken and late", "hi"]


def _model():
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(config_overrides=TINY_BERT), ("a", "b"))
    return model.eval()


def _probe(tokenizer):
    return encode(tokenizer, TEXTS, 32, [0, 1, 1, 0])


def _head_slice(head: int) -> slice:
    return slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)


def test_uniform_attention_has_entropy_one(tokenizer):
    model = _model()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for proj in (layer.attention.self.query, layer.attention.self.key):
                proj.weight.zero_()
                proj.bias.zero_()
    entropy = attention_entropy(model, _probe(tokenizer), pad_id=0, device=CPU)
    assert entropy.shape == (len(TEXTS), 2, 4)
    np.testing.assert_allclose(entropy, 1.0, atol=1e-5)


def _sharpen(model, layer: int, head: int) -> None:
    with torch.no_grad():
        attn = model.bert.encoder.layer[layer].attention.self
        for proj in (attn.query, attn.key):
            proj.weight[_head_slice(head)] *= 200
            proj.bias[_head_slice(head)] *= 200


def test_head_sharpened_by_fine_tuning_is_flagged_as_collapsed(tokenizer):
    base, tuned = _model(), _model()
    _sharpen(tuned, 0, 0)
    report = attention_report(
        tuned, base, _probe(tokenizer), pad_id=0, device=CPU, collapse_entropy=0.05
    )
    assert report.entropy[0, 0] < 0.05 <= report.base_entropy[0, 0]
    assert report.collapsed_heads == [(0, 0)]
    assert report.collapse
    others = np.delete(report.entropy.ravel(), 0)
    assert others.min() > 0.3
    assert tuned.config._attn_implementation == "sdpa", "eager attention must be switched back"


def test_head_already_sharp_in_the_base_model_is_not_a_collapse(tokenizer):
    """Pretrained encoders have deliberately sharp heads; only a change is a finding."""
    base, tuned = _model(), _model()
    _sharpen(base, 1, 3)
    _sharpen(tuned, 1, 3)
    report = attention_report(
        tuned, base, _probe(tokenizer), pad_id=0, device=CPU, collapse_entropy=0.05
    )
    assert report.entropy[1, 3] < 0.05
    assert report.collapsed_heads == []


def test_head_with_zero_output_has_zero_importance(tokenizer):
    model = _model()
    with torch.no_grad():
        value = model.bert.encoder.layer[1].attention.self.value
        value.weight[_head_slice(2)] = 0
        value.bias[_head_slice(2)] = 0
    probe = _probe(tokenizer)
    batch = {"input_ids": torch.tensor([probe.input_ids[0]])}
    before = model(**batch).logits
    importance = head_importance(model, probe, pad_id=0, device=CPU)
    assert importance.shape == (2, 4)
    assert importance[1, 2] == 0
    assert (np.delete(importance.ravel(), 6) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(importance, axis=1), 1.0, rtol=1e-5)
    # The gates are removed again: the model computes exactly what it did before.
    torch.testing.assert_close(model(**batch).logits, before)


def test_head_importance_per_input_gradients_do_not_depend_on_batching(tokenizer):
    """Each input's |gradient| counts on its own: batched equals one input at a time."""
    model, probe = _model(), _probe(tokenizer)
    one_by_one = head_importance(model, probe, pad_id=0, device=CPU, batch_size=1)
    batched = head_importance(model, probe, pad_id=0, device=CPU, batch_size=32)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-6)


def test_entropy_column_names_parse_back_to_their_head():
    """Every built entropy column parses to its (layer, head); other columns do not."""
    names = entropy_columns(2, 3)
    assert names[4] == "l1h1"
    assert [entropy_head(name) for name in names] == [(i, j) for i in range(2) for j in range(3)]
    assert entropy_head("label") is None and entropy_head("l1h1_mean") is None
