"""Pack what a bare GPU box (torch + transformers only, no network) needs for gpu_check.sh.

The MiniLM package (88 MB of fp32 weights) is over the device tool's 64 MiB transfer
limit, so this writes an xz-packed bf16 copy of the weights with the tokenizer. SmolLM2's
weights (270 MB even in bf16) cannot travel at all: only its config, tokenizer and chat
template go (the generation benchmarks run its architecture with random weights: speed, not
quality). Plus the wheels the spec loader, the data step and LoRA need; all into .device/
(git-ignored):

    python benchmarks/pack_for_device.py && echo /.device/ >> .git/info/exclude
"""

from __future__ import annotations

import lzma
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attnops.models.generation.base import load_base_tokenizer, model_cache_dir, smollm2_dirs
from attnops.models.modeling import resolve_base
from attnops.settings import Settings
from attnops.spec import DEFAULT_BASE_MODEL, ModelSpec
from attnops.spec_generation import SMOLLM2_BASE

REPO = Path(__file__).resolve().parents[1]
WHEELS = (
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection",  # the spec
    "pandas", "python-dateutil", "pytz", "tzdata", "six",  # data loading
    "peft",  # LoRA
)  # fmt: skip


def main() -> None:
    out = REPO / ".device"
    model_dir = out / "minilm"
    model_dir.mkdir(parents=True, exist_ok=True)
    source = Path(resolve_base(DEFAULT_BASE_MODEL))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):  # fmt: skip
        (model_dir / name).write_bytes((source / name).read_bytes())
    weights = load_file(source / "model.safetensors")
    bf16 = model_dir / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, bf16)
    # 45 MB of bf16 weights xz to 32 MB: with the wheels, under the limit (gpu_check.sh unpacks)
    with lzma.open(f"{bf16}.xz", "wb", preset=6) as packed:
        packed.write(bf16.read_bytes())
    bf16.unlink()
    _pack_smollm2_config(out / "smollm2")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", "--platform",
         "manylinux_2_17_x86_64", "-d", str(out / "wheels"), *WHEELS],
        check=True,
    )  # fmt: skip
    print(f"packed into {out}; carry '.device' in the device run")


def _pack_smollm2_config(folder: Path) -> None:
    """SmolLM2's config, tokenizer and chat template (the converted tokenizer folder)."""
    cache = model_cache_dir(Settings.from_env().home)
    load_base_tokenizer(ModelSpec(base=SMOLLM2_BASE), cache)  # converts it once if needed
    folder.mkdir(parents=True, exist_ok=True)
    for source in smollm2_dirs(cache)[1].iterdir():
        (folder / source.name).write_bytes(source.read_bytes())


if __name__ == "__main__":
    main()
