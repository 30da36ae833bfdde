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
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def run(batches: list[np.ndarray]) -> list[float]:
        seconds = []
        for _, batch in iterate(data, [batches[0], *batches], pad_id, device):  # [0]: warm-up
            batch.pop("labels", None)
            started = time.perf_counter()
            with autocast:
                model(**batch)
            if cuda:
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - started)
        return seconds[1:]

    single = run([np.array([i]) for i in range(min(latency_samples, len(data)))])
    batches = sequential_batches(data.lengths, throughput_batch_size)
    batched = run(batches)
    metrics = {
        **percentiles(np.asarray(single) * 1000, "latency_ms"),
        "throughput_per_s": len(data) / sum(batched),
        "model_size_mb": sum(t.numel() * t.element_size() for t in model.state_dict().values())
        / 2**20,
    }
    if cuda:
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        metrics["process_peak_rss_mb"] = _peak_rss_mb()
    return metrics


def _peak_rss_mb() -> float:
    """The process's lifetime peak resident set (it includes training when run after it)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
