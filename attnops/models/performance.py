"""Serving-relevant cost of a model: latency at batch 1, throughput, peak memory.

Latency is the model's own cost on this hardware: the CPU time one request takes on one
thread (wall time on CUDA). A busy neighbour stretches wall time, not the CPU time our
thread spends, and one thread has no barrier to wait at for a thread that lost its core.
Wall time is measured alongside; when the requests held their CPU for less than
`QUIET_CPU_SHARE` of it, other processes kept them waiting, and the timing is repeated.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np
import torch

from attnops.models.batching import Encoded, iterate, sequential_batches
from attnops.models.metrics import percentiles
from attnops.models.precision import bf16_autocast, inference_bf16
from attnops.models.threads import available_cpus, pinned_threads

QUIET_CPU_SHARE = 0.9
"""Requests that held a CPU for at least this share of their wall time were not kept waiting."""


@torch.inference_mode()
def measure_performance(
    model,
    data: Encoded,
    *,
    pad_id: int,
    device: torch.device,
    latency_samples: int,
    throughput_batch_size: int,
    bf16_on_cpu: bool = False,
) -> dict[str, float]:
    """Latency percentiles of single requests, examples/s at `throughput_batch_size`, memory.

    Uses real inputs of the test split with the serving kernel and dtype (SDPA, bf16
    autocast on CUDA and, with `bf16_on_cpu` (`serving.bf16`), on a CPU with native bf16),
    each pass after a warm-up. Latency is timed as the gate times it
    (`time_side_by_side`); throughput batches are length-sorted, as a batching server forms
    them, and run on the stage's threads.
    """
    model.eval()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    (single,) = time_side_by_side(
        [(model, data, pad_id)], samples=latency_samples, device=device, bf16_on_cpu=bf16_on_cpu
    )
    batches = sequential_batches(data.lengths, throughput_batch_size)
    timed = iterate(data, [batches[0], *batches], pad_id, device)  # [0]: warm-up
    batched = [_timed_forward(model, batch, device, bf16_on_cpu)[0] for _, batch in timed][1:]
    metrics = {
        **percentiles(np.asarray(single["latency_ms"]), "latency_ms"),
        "latency_wall_ms_p95": float(np.percentile(single["wall_latency_ms"], 95)),
        "latency_cpu_share": single["load"]["cpu_share"],
        "throughput_per_s": len(data) / sum(batched),
        "model_size_mb": model_size_mb(model),
    }
    if cuda:
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        metrics["process_peak_rss_mb"] = _peak_rss_mb()
    return metrics


@torch.inference_mode()
def time_side_by_side(
    runs: list[tuple[object, Encoded, int]],
    *,
    samples: int,
    device: torch.device,
    attempts: int = 3,
    pause_s: float = 2.0,
    bf16_on_cpu: bool = False,
) -> list[dict[str, object]]:
    """Batch-1 latency of several models, request by request in turn, on one torch thread.

    Timing one model after the other lets a busy neighbour, a CPU frequency change or a
    cache warm-up land on one side only; alternating request by request spreads them over
    all. When the requests held their CPU for less than `QUIET_CPU_SHARE` of their wall
    time, the whole timing is repeated (up to `attempts` times, `pause_s` apart) and the
    quietest attempt kept. On CUDA the GPU's work is not CPU time: latency is wall time and
    a busy CPU is not detected.

    Args:
        runs: (model, encoded inputs, pad id) per model, inputs in the same order.
        bf16_on_cpu: time bf16 passes on a CPU with native bf16, as `serving.bf16` serves.

    Returns:
        Per run, in order: `latency_ms` (each request's own cost: this thread's CPU
        milliseconds, wall milliseconds on CUDA; request i is the same input for every run,
        so the samples are paired), `wall_latency_ms`, and `load`, the conditions of the
        kept attempt (`cpu_share`, `quiet`, `attempts`, `loadavg_1m`, ...; the same for all).
    """
    cuda = device.type == "cuda"
    shares: list[float] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause_s)  # a burst of other work may be over by then
        wall_s, cpu_s, share = _interleaved(runs, samples, device, bf16_on_cpu)
        shares.append(share)
        if shares[-1] == max(shares):
            kept, loadavg_1m = (wall_s, cpu_s), os.getloadavg()[0]
        if cuda or shares[-1] >= QUIET_CPU_SHARE:
            break
    wall_s, cpu_s = kept
    load = {
        "clock": "wall" if cuda else "thread_cpu",
        "threads": 1,
        "cpu_share": max(shares),
        "quiet": cuda or max(shares) >= QUIET_CPU_SHARE,
        "quiet_cpu_share": QUIET_CPU_SHARE,
        "attempts": len(shares),
        "cpu_share_per_attempt": shares,
        "loadavg_1m": loadavg_1m,
        "cpus": available_cpus(),
    }
    own = wall_s if cuda else cpu_s
    return [
        {
            "latency_ms": (own[k] * 1000).tolist(),
            "wall_latency_ms": (wall_s[k] * 1000).tolist(),
            "load": load,
        }
        for k in range(len(runs))
    ]


def _interleaved(
    runs: list[tuple[object, Encoded, int]], samples: int, device: torch.device, bf16_on_cpu: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """(wall seconds, CPU seconds), each [run, request], from one pass over the inputs, and
    the share of the whole pass's wall time this thread held a CPU.

    The share is over the whole pass, gaps between requests included: a request shorter
    than the scheduler's time slice usually runs uninterrupted even beside a busy
    neighbour, which then takes its turn between requests.
    """
    n = min(samples, *(len(data) for _, data, _ in runs))
    wall_s, cpu_s = np.zeros((len(runs), n)), np.zeros((len(runs), n))
    for model, _, _ in runs:
        model.eval()
    with pinned_threads(1):
        # Warm every model up at every input length timed; neither kept nor in the share.
        # oneDNN builds its bf16 kernels per shape and shares them across models: without
        # this, the model timed first pays for each new length (2.4x on a tiny BERT).
        for model, data, pad_id in runs:
            _, first_of_length = np.unique(np.asarray(data.lengths[:n]), return_index=True)
            for i in first_of_length:
                ((_, batch),) = iterate(data, [np.array([i])], pad_id, device)
                _timed_forward(model, batch, device, bf16_on_cpu)
        started, started_cpu = time.perf_counter(), time.thread_time()
        for i in range(n):
            for k, (model, data, pad_id) in enumerate(runs):
                ((_, batch),) = iterate(data, [np.array([i])], pad_id, device)
                wall_s[k, i], cpu_s[k, i] = _timed_forward(model, batch, device, bf16_on_cpu)
        share = (time.thread_time() - started_cpu) / (time.perf_counter() - started)
    return wall_s, cpu_s, float(share)


def model_size_mb(model) -> float:
    """Size of the weights and buffers as loaded, in MiB."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20


def _peak_rss_mb() -> float:
    """The process's lifetime peak resident set (it includes training when run after it)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _timed_forward(
    model, batch: dict, device: torch.device, bf16_on_cpu: bool
) -> tuple[float, float]:
    """(wall, this thread's CPU) seconds of one forward pass with the serving dtype, waiting
    for the GPU to finish."""
    batch.pop("labels", None)
    cuda = device.type == "cuda"
    started, started_cpu = time.perf_counter(), time.thread_time()
    with bf16_autocast(device, inference_bf16(device, bf16_on_cpu)):
        model(**batch)
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, time.thread_time() - started_cpu
