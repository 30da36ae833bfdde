"""bf16 autocast where it pays: on CUDA, and on CPUs that do bf16 arithmetic natively.

Measured on a 2-core AMD EPYC with AVX512-BF16 (2026-11-30, SmolLM2-135M, batch 8 of 170
tokens, one thread): a training step of the top 10 layers took 2.6 s under bf16 autocast
against 7.5 s in fp32 (a 576x1536 linear alone: 453 vs 104 GFLOP/s). A CPU without those
instructions emulates bf16 and gets slower, so there autocast stays off. Weights stay fp32
(the optimizer's master copy); only the matmuls run in bf16.
"""

from __future__ import annotations

import copy

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 matmuls natively (CUDA, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def bf16_autocast(device: torch.device, wanted: bool) -> torch.autocast:
    """Autocast to bf16 on `device` when `wanted` (`training.bf16`) and it pays there."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=wanted and native_bf16(device))


def inference_bf16(device: torch.device, bf16_on_cpu: bool) -> bool:
    """Whether a forward pass outside training asks for bf16: always on CUDA, on a CPU when
    `bf16_on_cpu` (`serving.bf16`); `bf16_autocast` then applies it where it pays."""
    return device.type == "cuda" or bf16_on_cpu


def dtype_label(device: torch.device, wanted: bool) -> str:
    """What the run card says the matmuls ran in."""
    return "bf16 autocast" if wanted and native_bf16(device) else "fp32"


def decoding_weights(model, device: torch.device, wanted: bool):
    """`model` itself, or a bf16 copy of it when `wanted` and `device` does bf16 natively.

    Decoding runs one forward pass per token, so autocast would cast every weight again at
    every step: a copy casts them once, and its KV cache takes half the bytes. `model`
    stays as it was, for whatever must score as evaluation did (the hallucination scorer).
    The parameters are cast as they are copied (tied ones stay tied): a copy in fp32 first
    would need the model's memory twice over while a server loads a canary.
    """
    if not (wanted and native_bf16(device)):
        return model
    cast = {
        id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
        for p in model.parameters()
    }
    return copy.deepcopy(model, cast).to(torch.bfloat16).eval()
