"""Serving cost of a generative model: tokens, latency per token, throughput, memory, dollars.

Decoding is timed as a server that flags hallucinations online would run it: greedy, with
the detector's signals (eager attention, lookback ratios) on. Time to first token and
inter-token latency come from requests decoded one at a time (batch 1); throughput and the
cost per request from the same requests decoded `THROUGHPUT_BATCH_SIZE` at a time, shortest
prompts together, as a batching server groups them. All times are wall-clock seconds on
this machine with the stage's threads; a busy neighbour stretches them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnops.models.generation.decode import Decoded, decode
from attnops.models.metrics import percentiles
from attnops.models.performance import _peak_rss_mb, model_size_mb

THROUGHPUT_BATCH_SIZE = 8
"""Requests decoded together for throughput and cost."""


@dataclass(frozen=True)
class DecodeRun:
    """Greedy outputs in input order and the wall seconds the whole run took."""

    outputs: list[Decoded]
    wall_s: float
    batch_size: int

    @property
    def output_tokens(self) -> int:
        return sum(len(d.token_ids) for d in self.outputs)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0


def decode_timed(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 1,
    warm_up: bool = True,
) -> DecodeRun:
    """Greedy decoding with signals, timed as a whole; batches group prompts of similar length.

    Args:
        warm_up: Decode two tokens of the first prompt first (allocator, kernels), untimed.
    """
    if warm_up:
        decode(model, tokenizer, prompts[:1], max_new_tokens=2, device=device)
    order = np.argsort([len(p) for p in prompts], kind="stable") if batch_size > 1 else None
    ordered = [prompts[i] for i in order] if order is not None else list(prompts)
    started = _clock(device)
    decoded = decode(model, tokenizer, ordered, max_new_tokens=max_new_tokens, device=device,
                     batch_size=batch_size)  # fmt: skip
    wall_s = _clock(device) - started
    if order is not None:
        restored: list[Decoded | None] = [None] * len(prompts)
        for position, index in enumerate(order):
            restored[index] = decoded[position]
        decoded = restored
    return DecodeRun(outputs=decoded, wall_s=wall_s, batch_size=batch_size)


def cost_metrics(
    prompts: Sequence[Sequence[int]],
    single: DecodeRun,
    batched: DecodeRun,
    *,
    cost_per_hour_usd: float,
    device: torch.device,
    model,
) -> dict[str, float]:
    """Token counts, latency percentiles (ms), tokens/s, memory and cost per 1,000 requests.

    Args:
        prompts: Prompt token ids of the requests (both runs decode these).
        single: The requests decoded one at a time.
        batched: The same requests decoded `batched.batch_size` at a time.
        cost_per_hour_usd: Price of the serving machine.
    """
    prompt_tokens = np.array([len(p) for p in prompts], dtype=np.float64)
    output_tokens = np.array([len(d.token_ids) for d in single.outputs], dtype=np.float64)
    ttft_ms = np.array([d.ttft_s for d in single.outputs]) * 1000
    inter_token_ms = np.array([s for d in single.outputs for s in d.inter_token_s]) * 1000
    if not len(inter_token_ms):  # every output was a single token: no step after the first
        inter_token_ms = np.zeros(1)
    seconds_per_request = batched.wall_s / len(prompts)
    b = batched.batch_size
    metrics = {
        **percentiles(prompt_tokens, "prompt_tokens", (50, 95)),
        "prompt_tokens_max": float(prompt_tokens.max()),
        **percentiles(output_tokens, "output_tokens", (50, 95)),
        "output_tokens_max": float(output_tokens.max()),
        "output_tokens_mean": float(output_tokens.mean()),
        **percentiles(ttft_ms, "ttft_ms"),
        **percentiles(inter_token_ms, "inter_token_ms"),
        "output_tokens_per_s_batch1": single.tokens_per_s,
        f"output_tokens_per_s_batch{b}": batched.tokens_per_s,
        f"seconds_per_request_batch{b}": seconds_per_request,
        "cost_per_1k_requests_usd": seconds_per_request * 1000 / 3600 * cost_per_hour_usd,
        "model_size_mb": model_size_mb(model),
    }
    if device.type == "cuda":
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        metrics["process_peak_rss_mb"] = _peak_rss_mb()
    return metrics


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
