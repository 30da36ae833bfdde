"""Pack what a bare GPU box (torch + transformers only, no network) needs for gpu_check.sh.

The MiniLM package (88 MB of fp32 weights) is over the device tool's 64 MiB transfer
limit, so this writes a bf16 copy of the weights with the tokenizer, plus the pure-Python
wheels the spec loader needs, into .device/ (git-ignored):

    python benchmarks/pack_for_device.py && echo /.device/ >> .git/info/exclude
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attnops.models.modeling import resolve_base
from attnops.spec import DEFAULT_BASE_MODEL

REPO = Path(__file__).resolve().parents[1]
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")


def main() -> None:
    out = REPO / ".device"
    model_dir = out / "minilm"
    model_dir.mkdir(parents=True, exist_ok=True)
    source = Path(resolve_base(DEFAULT_BASE_MODEL))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):  # fmt: skip
        (model_dir / name).write_bytes((source / name).read_bytes())
    weights = load_file(source / "model.safetensors")
    save_file(
        {k: v.to(torch.bfloat16) for k, v in weights.items()}, model_dir / "model.safetensors"
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", "--platform",
         "manylinux_2_17_x86_64", "-d", str(out / "wheels"), *WHEELS],
        check=True,
    )  # fmt: skip
    print(f"packed into {out}; carry '.device' in the device run")


if __name__ == "__main__":
    main()
