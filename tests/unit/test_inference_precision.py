"""Served forward passes run in bf16 where the CPU does bf16 natively, and only when asked;
the latency the evaluation and the gate report is timed in the same precision."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from attnops.models.batching import encode
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier
from attnops.models.performance import time_side_by_side
from attnops.models.precision import native_bf16
from attnops.spec import ModelSpec
from tests.conftest import TINY_BERT

CPU = torch.device("cpu")
TEXTS = ["where is my order", "refund me now please, the parcel arrived broken", "hi"]


def _model():
    torch.manual_seed(0)
    return build_classifier(ModelSpec(config_overrides=TINY_BERT), ("a", "b")).eval()


def _matmul_dtypes(model, run: Callable[[], object]) -> tuple[object, set[torch.dtype]]:
    """What `run()` returns, and the dtypes a linear layer of `model` produced meanwhile."""
    dtypes: set[torch.dtype] = set()
    layer = model.bert.encoder.layer[0].intermediate.dense
    hook = layer.register_forward_hook(lambda _, __, out: dtypes.add(out.dtype))
    try:
        return run(), dtypes
    finally:
        hook.remove()


def _served(bf16_on_cpu: bool) -> set[torch.dtype]:
    return {torch.bfloat16} if bf16_on_cpu and native_bf16(CPU) else {torch.float32}


def test_bf16_only_when_asked_and_native_with_the_same_answers(tokenizer):
    model, encoded = _model(), encode(tokenizer, TEXTS, 32)
    answers = {}
    for bf16_on_cpu in (False, True):
        answers[bf16_on_cpu], dtypes = _matmul_dtypes(
            model,
            lambda bf16=bf16_on_cpu: predict(
                model, encoded, pad_id=tokenizer.pad_token_id, device=CPU, bf16_on_cpu=bf16
            ),
        )
        assert dtypes == _served(bf16_on_cpu)
    fp32, bf16 = answers[False], answers[True]
    assert bf16.probs.dtype == np.float32 and bf16.probs.shape == fp32.probs.shape
    np.testing.assert_allclose(bf16.probs, fp32.probs, atol=0.02)


@pytest.mark.parametrize("bf16_on_cpu", [False, True])
def test_latency_is_timed_in_the_served_precision(tokenizer, bf16_on_cpu):
    model, encoded = _model(), encode(tokenizer, TEXTS, 32)
    (timing,), dtypes = _matmul_dtypes(
        model,
        lambda: time_side_by_side(
            [(model, encoded, tokenizer.pad_token_id)],
            samples=3,
            device=CPU,
            attempts=1,
            bf16_on_cpu=bf16_on_cpu,
        ),
    )
    assert len(timing["latency_ms"]) == 3
    assert dtypes == _served(bf16_on_cpu)


def test_an_empty_split_encodes_and_predicts_to_nothing(tokenizer):
    """A test split without out-of-scope rows (most public data) is an empty batch: the fast
    tokenizer would fail on it."""
    empty = encode(tokenizer, [], 16, labels=[])
    assert (empty.input_ids, empty.labels, empty.lengths.tolist()) == ([], [], [])
    out = predict(_model(), empty, pad_id=tokenizer.pad_token_id, device=CPU, with_embeddings=True)
    assert out.probs.shape == (0, 2) and out.labels.tolist() == []
