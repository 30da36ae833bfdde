"""Serving-relevant cost of a model: latency at batch 1, throughput, peak memory."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch

from attnops.models.batching import Encoded, iterate, sequential_batches
from attnops.models.metrics import percentiles


@torch.inference_mode()
def measure_performance(
    model,
    data: Encoded,
    *,
    pad_id: int,
    device: torch.device,
    latency_samples: int,
    throughput_batch_size: int,
) -> dict[str, float]:
    """Latency percentiles of single requests and examples/s at `throughput_batch_size`.

    Uses real inputs of the test split (first `latency_samples` for latency, then whole
    batches for throughput) after one warm-up pass, with the serving attention kernel.
    """
    model.eval()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    single = [np.array([i]) for i in range(min(latency_samples, len(data)))]
    timings = []
    for n, (_, batch) in enumerate(iterate(data, [single[0], *single], pad_id, device)):
        batch.pop("labels", None)
        started = time.perf_counter()
        model(**batch)
        if cuda:
            torch.cuda.synchronize(device)
        if n:  # the first call is a warm-up
            timings.append((time.perf_counter() - started) * 1000)

    batches = sequential_batches(data.lengths, throughput_batch_size)
    examples, started = 0, time.perf_counter()
    for indices, batch in iterate(data, batches, pad_id, device):
        batch.pop("labels", None)
        model(**batch)
        examples += len(indices)
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    return {
        **percentiles(np.asarray(timings), "latency_ms"),
        "throughput_per_s": examples / elapsed,
        "peak_memory_mb": peak_memory_mb(device),
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA; otherwise the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
