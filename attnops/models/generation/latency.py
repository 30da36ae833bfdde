"""Time to first token and inter-token latency of several versions, side by side.

The gate's relative limits compare a candidate with its champion measured moments apart on
the same machine: request by request in turn (candidate, champion, candidate, ...) on the
same prompts at batch 1, on one pinned thread, so a neighbour's burst slows both alike. As
for classification, the share of the pass's wall time this thread held a CPU says whether
the machine was quiet; a busy pass is retimed and the quietest attempt kept.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from attnops.models.generation.decode import decode
from attnops.models.performance import QUIET_CPU_SHARE, model_size_mb
from attnops.models.threads import available_cpus, pinned_threads


@torch.inference_mode()
def time_generators_side_by_side(
    runs: list[tuple[object, object]],
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    device: torch.device,
    attempts: int = 3,
    pause_s: float = 2.0,
) -> list[dict[str, object]]:
    """Per version (model, tokenizer), in order: `ttft_ms` and `inter_token_ms` (that
    request's mean gap) per prompt, paired by position, `load` and `model_size_mb`."""
    cuda = device.type == "cuda"
    best: tuple[float, list[dict[str, list[float]]]] | None = None
    shares: list[float] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause_s)  # a burst of other work may be over by then
        share, timings = _interleaved(runs, prompts, max_new_tokens, device)
        shares.append(share)
        if best is None or share > best[0]:
            best = (share, timings)
        if cuda or share >= QUIET_CPU_SHARE:
            break
    share, timings = best
    load = {
        "clock": "wall",
        "threads": 1,
        "cpu_share": share,
        "quiet": cuda or share >= QUIET_CPU_SHARE,
        "quiet_cpu_share": QUIET_CPU_SHARE,
        "attempts": len(shares),
        "cpu_share_per_attempt": shares,
        "loadavg_1m": os.getloadavg()[0],
        "cpus": available_cpus(),
    }
    return [
        {**timing, "load": load, "model_size_mb": model_size_mb(model)}
        for timing, (model, _) in zip(timings, runs, strict=True)
    ]


def _interleaved(runs, prompts, max_new_tokens, device) -> tuple[float, list[dict]]:
    timings = [{"ttft_ms": [], "inter_token_ms": []} for _ in runs]
    with pinned_threads(1):
        for model, tokenizer in runs:  # warm-up, outside the measured pass
            decode(model, tokenizer, prompts[:1], max_new_tokens=2, device=device, signals=False)
        started, started_cpu = time.perf_counter(), time.thread_time()
        for prompt in prompts:
            for timing, (model, tokenizer) in zip(timings, runs, strict=True):
                (out,) = decode(
                    model,
                    tokenizer,
                    [prompt],
                    max_new_tokens=max_new_tokens,
                    device=device,
                    signals=False,
                )
                timing["ttft_ms"].append(out.ttft_s * 1000)
                gaps = out.inter_token_s
                timing["inter_token_ms"].append(float(np.mean(gaps)) * 1000 if gaps else None)
        share = (time.thread_time() - started_cpu) / (time.perf_counter() - started)
    # An output of one token has no inter-token gap: such a prompt is left out of the
    # inter-token pairs for every version, so the pairs stay the same prompts.
    paired = [all(t["inter_token_ms"][i] is not None for t in timings) for i in range(len(prompts))]
    for timing in timings:
        timing["inter_token_ms"] = [
            v for v, keep in zip(timing["inter_token_ms"], paired, strict=True) if keep
        ]
    return float(share), timings
