"""Generation fixtures: SmolLM2's real tokenizer (from the GGUF, cached once per session) and
tiny random Llama models over its vocabulary that train in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    # SmolLM2's config sets head_dim 64 explicitly: it does not follow hidden_size by itself.
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}
"""`model.config_overrides` for a 2-layer random Llama with SmolLM2's vocabulary."""


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """The base-model cache: $ATTNOPS_MODEL_CACHE when set (reuse a developer's), else a
    session tmp dir; exported so code that reads the variable finds the same one."""
    from attnops.models.generation.base import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    folder = Path(before) if before else tmp_path_factory.mktemp("base-models")
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if before is None:
        del os.environ[CACHE_ENV]


@pytest.fixture(scope="session")
def tokenizer(model_cache):
    """SmolLM2-135M-Instruct's tokenizer (chat template, <|im_end|> as eos and pad)."""
    from attnops.models.generation.base import load_base_tokenizer
    from attnops.spec import ModelSpec
    from attnops.spec_generation import SMOLLM2_BASE

    return load_base_tokenizer(ModelSpec(base=SMOLLM2_BASE), model_cache)


@pytest.fixture
def tiny_llama(tokenizer):
    """A seeded 2-layer random Llama (hidden 32, 2 heads, 1 kv head) with eager attention,
    so attention weights can be read."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **{k: v for k, v in TINY_LLAMA.items() if k != "head_dim"},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()
