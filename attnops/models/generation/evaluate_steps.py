"""The measurements a generator evaluation takes (`evaluate.evaluate_generator` runs them):
the fixed sample of test inputs, greedy decoding alone, batched and again, each output's
quality and hallucination scores, and the base model's scores beside them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnops.models.generation.cost import (
    THROUGHPUT_BATCH_SIZE,
    DecodeRun,
    cost_metrics,
    decode_timed,
)
from attnops.models.generation.data import CONTEXT, SOURCE, TARGET
from attnops.models.generation.decode import Decoded
from attnops.models.generation.detector import DETECTORS, HallucinationDetector, detector_features
from attnops.models.generation.quality import quality_scores
from attnops.spec_generation import GenerationSpec

DETERMINISM_INPUTS = 4
"""Inputs decoded a second time, alone as the first time, to check outputs repeat exactly."""
PARTS = tuple(p for p in DETECTORS if p != "combined")
"""Detector views scored alone; the combined score is `hallucination_score`."""
SAMPLE_SEED = 0  # fixed, not the training seed: versions trained with other seeds share inputs


def eval_inputs(test: pd.DataFrame, eval_samples: int | None) -> pd.DataFrame:
    """A fixed sample of the test split in its original order (all of it when None or larger)."""
    if eval_samples is None or eval_samples >= len(test):
        return test
    return test.sample(n=eval_samples, random_state=SAMPLE_SEED).sort_index()


@dataclass(frozen=True)
class DecodeRuns:
    """The eval inputs decoded greedily: alone, batched, and (a few) alone again."""

    single: DecodeRun
    """Batch 1: the outputs scored (no padding, as a lone request gets them) and the
    per-token latency."""
    batched: DecodeRun
    """Batch THROUGHPUT_BATCH_SIZE: the throughput and the cost per request."""
    cost: dict[str, float]
    repeated: list[bool]
    """Whether each of the first DETERMINISM_INPUTS outputs came out the same again."""


def decode_eval_inputs(
    model, tokenizer, prompts: list[list[int]], gen: GenerationSpec, device: torch.device
) -> DecodeRuns:
    """Decode every eval input alone and batched (the cost figures), and a few again."""
    decoding = {"max_new_tokens": gen.max_new_tokens, "device": device}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    single = decode_timed(model, tokenizer, prompts, **decoding)
    batched = decode_timed(
        model, tokenizer, prompts, batch_size=THROUGHPUT_BATCH_SIZE, warm_up=False, **decoding
    )
    cost = cost_metrics(
        prompts,
        single,
        batched,
        cost_per_hour_usd=gen.cost_per_hour_usd,
        device=device,
        model=model,
    )
    again = decode_timed(model, tokenizer, prompts[:DETERMINISM_INPUTS], warm_up=False, **decoding)
    repeated = [
        a.token_ids == b.token_ids for a, b in zip(again.outputs, single.outputs, strict=False)
    ]
    return DecodeRuns(single=single, batched=batched, cost=cost, repeated=repeated)


def per_input_table(
    frame: pd.DataFrame,
    prompts: list[list[int]],
    single: DecodeRun,
    detector: HallucinationDetector,
) -> pd.DataFrame:
    """One row per eval input: its text, reference, prompt size, scored output and TTFT."""
    return pd.DataFrame(
        {
            "request_index": frame.index.to_numpy(),
            SOURCE: frame[SOURCE].to_numpy(),
            CONTEXT: frame[CONTEXT].to_numpy(),
            "reference": frame[TARGET].to_numpy(),
            "prompt_tokens": [len(p) for p in prompts],
            **score_outputs(frame, single.outputs, detector),
            "ttft_ms": [d.ttft_s * 1000 for d in single.outputs],
        }
    )


def score_outputs(
    frame: pd.DataFrame, outputs: list[Decoded], detector: HallucinationDetector
) -> dict[str, np.ndarray | list]:
    """Per-output columns: text, tokens, quality scores, detector scores and flag, logprobs."""
    texts = [d.text for d in outputs]
    quality = quality_scores(texts, frame[TARGET].tolist())
    features = detector_features(
        frame[SOURCE].tolist(), frame[CONTEXT].tolist(), texts, [d.signals for d in outputs]
    )
    parts = detector.component_scores(features)
    return {
        "output": texts,
        "output_tokens": [len(d.token_ids) for d in outputs],
        "stopped_at_eos": [d.stopped_at_eos for d in outputs],
        **quality,
        "hallucination_score": parts["combined"],
        "hallucinated": parts["combined"] >= detector.threshold,
        **{f"detector_{part}_score": parts[part] for part in PARTS},
        "logprob_mean": features.logprob[:, 0],
        "logprob_min": features.logprob[:, 1],
    }


def add_baseline(
    table: pd.DataFrame,
    metrics: dict[str, float],
    frame: pd.DataFrame,
    base_run: DecodeRun,
    detector: HallucinationDetector,
) -> dict[str, object]:
    """The base model's scores beside the model's (`baseline_*` columns and metrics).

    Returns:
        The report's `baseline` section.
    """
    for column, values in score_outputs(frame, base_run.outputs, detector).items():
        table[f"baseline_{column}"] = values
    for name in ("rouge_l", "chrf", "fact_recall"):
        metrics[f"baseline_{name}"] = float(table[f"baseline_{name}"].mean())
        metrics[f"{name}_gain_over_baseline"] = (
            metrics[f"test_{name}"] - metrics[f"baseline_{name}"]
        )
    metrics["baseline_hallucination_rate"] = float(table["baseline_hallucinated"].mean())
    return {
        "decoded_at_batch_size": THROUGHPUT_BATCH_SIZE,
        "note": "the detector's attention part was fitted on the fine-tuned model's "
        "lookback ratios; on the base model's it is applied as is",
    }


def cost_notes(single: DecodeRun, batched: DecodeRun, cost_per_hour_usd: float) -> dict:
    """The report's `cost` section: how the cost and latency figures were measured."""
    return {
        "clock": "wall",
        "threads": torch.get_num_threads(),
        "latency_from": "batch 1: each request decoded alone",
        "cost_from": f"measured seconds per request at batch {batched.batch_size} "
        f"(wall time of the batched run / requests) x ${cost_per_hour_usd}/hour",
        "signals": "on (eager attention, lookback ratios), as online hallucination flagging needs",
        "wall_s": {"batch1": single.wall_s, f"batch{batched.batch_size}": batched.wall_s},
    }
