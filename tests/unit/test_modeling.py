"""Building the classifier from a spec."""

import pytest
import torch

from attnops.models.modeling import build_classifier
from attnops.spec import ModelSpec
from tests.conftest import TINY_BERT


def test_bf16_checkpoint_trains_with_fp32_master_weights(tokenizer, tmp_path):
    torch.manual_seed(0)
    build_classifier(ModelSpec(config_overrides=TINY_BERT), ("a", "b")).to(
        torch.bfloat16
    ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = build_classifier(ModelSpec(base=str(tmp_path)), ("a", "b", "c"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_max_length_beyond_the_position_table_is_refused():
    spec = ModelSpec(max_length=1024, config_overrides=TINY_BERT)
    with pytest.raises(ValueError, match=r"model.max_length 1024 exceeds the 512 positions"):
        build_classifier(spec, ("a", "b"))
