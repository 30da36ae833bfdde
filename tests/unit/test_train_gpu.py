"""The same loop on CUDA: bf16 autocast, fused AdamW, pinned-memory copies, optional compile."""

import pytest
import torch

from attnops.models.batching import encode
from attnops.models.modeling import build_classifier
from attnops.models.train import fine_tune
from attnops.spec import ModelSpec, TrainingSpec
from tests.conftest import TINY_BERT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.mark.parametrize("compile_model", [False, True])
def test_overfits_one_batch_on_cuda_in_bf16(tokenizer, compile_model):
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(config_overrides=NO_DROPOUT), ("a", "b"))
    texts = ["refund my order", "where is my parcel", "money back please", "track it"] * 2
    data = encode(tokenizer, texts, 32, [0, 1, 0, 1] * 2)
    cfg = TrainingSpec(epochs=60, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0,
                       early_stopping_patience=None, compile=compile_model)  # fmt: skip
    result = fine_tune(
        model, data, data, cfg, pad_id=0, device=torch.device("cuda"), progress=False
    )
    assert result.run_card["dtype"] == "bf16 autocast"
    assert result.best_val_macro_f1 == 1.0
    assert next(model.parameters()).device.type == "cuda"
