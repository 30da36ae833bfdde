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
    """Latency percentiles of single requests, examples/s at `throughput_batch_size`, memory.

    Uses real inputs of the test split with the serving kernel and dtype (SDPA, bf16
    autocast on CUDA), each pass after a warm-up. Throughput batches are length-sorted,
    as a batching server forms them.
    """
    model.eval()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def run(batches: list[np.ndarray]) -> list[float]:
        timed = iterate(data, [batches[0], *batches], pad_id, device)  # [0]: warm-up
        return [_timed_forward(model, batch, device) for _, batch in timed][1:]

    single = run([np.array([i]) for i in range(min(latency_samples, len(data)))])
    batches = sequential_batches(data.lengths, throughput_batch_size)
    batched = run(batches)
    metrics = {
        **percentiles(np.asarray(single) * 1000, "latency_ms"),
        "throughput_per_s": len(data) / sum(batched),
        "model_size_mb": model_size_mb(model),
    }
    if cuda:
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        metrics["process_peak_rss_mb"] = _peak_rss_mb()
    return metrics


def model_size_mb(model) -> float:
    """Size of the weights and buffers as loaded, in MiB."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20


def _peak_rss_mb() -> float:
    """The process's lifetime peak resident set (it includes training when run after it)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@torch.inference_mode()
def interleaved_latency_ms(
    runs: list[tuple[object, Encoded, int]], *, samples: int, device: torch.device
) -> list[np.ndarray]:
    """Batch-1 latency of several models per request, measured turn by turn on the same inputs.

    Timing one model after the other lets a busy neighbour, a CPU frequency change or a
    cache warm-up land on one side only; alternating request by request spreads them over
    all. `runs` holds (model, encoded inputs, pad id) per model, inputs in the same order.

    Returns:
        Per run, in order, the milliseconds of each request (request i is the same input
        for every run, so the samples are paired).
    """
    n = min(samples, *(len(data) for _, data, _ in runs))
    seconds: list[list[float]] = [[] for _ in runs]
    for model, _, _ in runs:
        model.eval()
    for i in [0, *range(n)]:  # the first round warms every model up and is not counted
        for k, (model, data, pad_id) in enumerate(runs):
            ((_, batch),) = iterate(data, [np.array([i])], pad_id, device)
            seconds[k].append(_timed_forward(model, batch, device))
    return [np.asarray(s[1:]) * 1000 for s in seconds]


def _timed_forward(model, batch: dict, device: torch.device) -> float:
    """Seconds for one forward pass with the serving dtype, waiting for the GPU to finish."""
    batch.pop("labels", None)
    cuda = device.type == "cuda"
    started = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        model(**batch)
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
