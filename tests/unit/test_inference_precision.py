"""Served forward passes run in bf16 where the CPU does bf16 natively, and only when asked."""

from __future__ import annotations

import numpy as np
import torch

from attnops.models.batching import encode
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier
from attnops.models.precision import native_bf16
from attnops.spec import ModelSpec
from tests.conftest import TINY_BERT

CPU = torch.device("cpu")
TEXTS = ["where is my order", "refund me now please, the parcel arrived broken", "hi"]


def _run(model, tokenizer, bf16_on_cpu: bool):
    dtypes: list[torch.dtype] = []
    layer = model.bert.encoder.layer[0].intermediate.dense
    hook = layer.register_forward_hook(lambda _, __, out: dtypes.append(out.dtype))
    try:
        encoded = encode(tokenizer, TEXTS, 32)
        out = predict(
            model, encoded, pad_id=tokenizer.pad_token_id, device=CPU, bf16_on_cpu=bf16_on_cpu
        )
    finally:
        hook.remove()
    return out, set(dtypes)


def test_bf16_only_when_asked_and_native_with_the_same_answers(tokenizer):
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(config_overrides=TINY_BERT), ("a", "b")).eval()
    fp32, fp32_dtypes = _run(model, tokenizer, bf16_on_cpu=False)
    bf16, bf16_dtypes = _run(model, tokenizer, bf16_on_cpu=True)

    assert fp32_dtypes == {torch.float32}
    assert bf16_dtypes == ({torch.bfloat16} if native_bf16(CPU) else {torch.float32})
    assert bf16.probs.dtype == np.float32 and bf16.probs.shape == fp32.probs.shape
    np.testing.assert_allclose(bf16.probs, fp32.probs, atol=0.02)
