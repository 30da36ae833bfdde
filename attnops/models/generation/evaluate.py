"""Evaluate a fine-tuned generator: quality, hallucination, serving cost, determinism, heads.

The same `spec.generation.eval_samples` test inputs (a fixed, seed-0 sample of the test
split, so two versions evaluated on the same data see the same inputs) are decoded greedily
by the model and, when given, by the untuned base model. The per-input table keeps the
scores of both side by side for the gate's paired tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnops.models.evaluate import EVALUATION_JSON, Evaluation
from attnops.models.generation.cost import (
    THROUGHPUT_BATCH_SIZE,
    DecodeRun,
    cost_metrics,
    decode_timed,
)
from attnops.models.generation.data import CONTEXT, SOURCE, TARGET, GenerationData, prompt_ids
from attnops.models.generation.decode import Decoded
from attnops.models.generation.detector import DETECTORS, HallucinationDetector, detector_features
from attnops.models.generation.heads import head_report
from attnops.models.generation.prompt_profile import prompt_embeddings, write_prompt_profile
from attnops.models.generation.quality import quality_scores
from attnops.models.threads import use_threads
from attnops.spec import PipelineSpec

PER_INPUT = "per_input.parquet"
DETERMINISM_INPUTS = 4
"""Inputs decoded a second time, alone as the first time, to check outputs repeat exactly."""
PARTS = tuple(p for p in DETECTORS if p != "combined")
"""Detector views scored alone; the combined score is `hallucination_score`."""
_SAMPLE_SEED = 0  # fixed, not the training seed: versions trained with other seeds share inputs


def evaluate_generator(
    model,
    tokenizer,
    data: GenerationData,
    spec: PipelineSpec,
    *,
    device: torch.device,
    out_dir: Path,
    detector: HallucinationDetector,
    detector_report: dict | None = None,
    base_model=None,
    fit: dict[str, object] | None = None,
) -> Evaluation:
    """Decode test inputs and write the evidence: evaluation.json, per_input.parquet, PNGs.

    Args:
        model: The fine-tuned causal LM, on `device`.
        tokenizer: Its tokenizer (chat template, eos and pad ids).
        data: The splits; inputs come from `data.splits["test"]`.
        spec: The pipeline spec (`generation`, `evaluation.probe_size`, `training.num_threads`).
        device: Where `model` (and `base_model`) live.
        out_dir: Created if needed; receives the files listed in the result.
        detector: The fitted hallucination detector; it scores every output.
        detector_report: Its held-out ROC AUCs (`detector_fit.fit_detector`), kept in the
            report as `detector` and as `detector_auc_<view>` metrics.
        base_model: The untuned base model; when given its outputs for the same inputs are
            scored too (`baseline_*` metrics and table columns).
        fit: The training's fit diagnosis, kept in the report; adds `underfit` (1/0).

    Returns:
        `Evaluation` whose `reference` holds one row per evaluated input with its raw text
        (source, context, output): redact before storing.
    """
    use_threads(spec.training.num_threads, stage="evaluation")
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = spec.generation
    frame = _eval_inputs(data.splits["test"], gen.eval_samples)
    prompts = [
        prompt_ids(tokenizer, gen, s, c) for s, c in zip(frame[SOURCE], frame[CONTEXT], strict=True)
    ]
    decoding = {"max_new_tokens": gen.max_new_tokens, "device": device}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # Batch 1 gives the outputs scored below (no padding, as a lone request gets them) and
    # the per-token latency; batch 8 the throughput and the cost per request.
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

    candidate = _score_outputs(frame, single.outputs, detector)
    table = pd.DataFrame(
        {
            "request_index": frame.index.to_numpy(),
            SOURCE: frame[SOURCE].to_numpy(),
            CONTEXT: frame[CONTEXT].to_numpy(),
            "reference": frame[TARGET].to_numpy(),
            "prompt_tokens": [len(p) for p in prompts],
            **candidate,
            "ttft_ms": [d.ttft_s * 1000 for d in single.outputs],
        }
    )
    metrics = {
        "test_rouge_l": float(table["rouge_l"].mean()),
        "test_chrf": float(table["chrf"].mean()),
        "test_fact_recall": float(table["fact_recall"].mean()),
        "test_hallucination_rate": float(table["hallucinated"].mean()),
        "test_hallucination_score_mean": float(table["hallucination_score"].mean()),
        **{
            f"test_detector_{p}_score_mean": float(table[f"detector_{p}_score"].mean())
            for p in PARTS
        },
        **cost,
        "determinism_rate": float(np.mean(repeated)),
        "n_eval_inputs": float(len(table)),
    }

    lookback = np.stack([d.lookback for d in single.outputs])
    heads = head_report(model, prompts[: spec.evaluation.probe_size], lookback, device=device)
    metrics |= heads.metrics()

    baseline_report = None
    if base_model is not None:
        base_run = decode_timed(
            base_model, tokenizer, prompts, batch_size=THROUGHPUT_BATCH_SIZE, **decoding
        )
        base = _score_outputs(frame, base_run.outputs, detector)
        for column, values in base.items():
            table[f"baseline_{column}"] = values
        for name in ("rouge_l", "chrf", "fact_recall"):
            metrics[f"baseline_{name}"] = float(table[f"baseline_{name}"].mean())
            metrics[f"{name}_gain_over_baseline"] = (
                metrics[f"test_{name}"] - metrics[f"baseline_{name}"]
            )
        metrics["baseline_hallucination_rate"] = float(table["baseline_hallucinated"].mean())
        baseline_report = {
            "decoded_at_batch_size": THROUGHPUT_BATCH_SIZE,
            "note": "the detector's attention part was fitted on the fine-tuned model's "
            "lookback ratios; on the base model's it is applied as is",
        }

    report = {
        "metrics": metrics,
        "eval_inputs": {
            "n": len(table),
            "test_rows": len(data.splits["test"]),
            "sample_seed": _SAMPLE_SEED,
            "request_index": table["request_index"].tolist(),
        },
        "decoding": {
            "greedy": True,
            "max_new_tokens": gen.max_new_tokens,
            "signals": True,
            "stopped_at_eos_share": float(table["stopped_at_eos"].mean()),
        },
        "cost": _cost_notes(single, batched, gen.cost_per_hour_usd),
        "determinism": {"inputs": len(repeated), "repeated": repeated},
        "hallucination": {
            "threshold": detector.threshold,
            "parts": list(DETECTORS),
            "score": "combined P(hallucinated); detector_<part>_score: one view alone",
        },
        "attention": heads.summary()
        | {"probe_size": min(spec.evaluation.probe_size, len(prompts))},
        "baseline": baseline_report,
    }
    if detector_report:
        report["detector"] = detector_report
        metrics |= {f"detector_auc_{k}": v for k, v in detector_report["overall"].items()}
    if fit:
        report["fit"] = fit
        # Underfit = the budget ran out while train and validation loss were still falling.
        metrics["underfit"] = float(bool(fit.get("still_learning")))
    files = heads.write_pngs(out_dir)
    files.append(out_dir / EVALUATION_JSON)
    files[-1].write_text(json.dumps(report, indent=2, default=_json_default))
    files.append(out_dir / PER_INPUT)
    table.to_parquet(files[-1], index=False)

    reference = table[
        [
            "request_index",
            SOURCE,
            CONTEXT,
            "output",
            "prompt_tokens",
            "output_tokens",
            "hallucination_score",
            "hallucinated",
            "logprob_mean",
            "logprob_min",
        ]
    ].copy()
    reference["output_chars"] = reference["output"].str.len()
    reference["lookback"] = [d.lookback.ravel().astype(np.float32) for d in single.outputs]
    projected, summary = write_prompt_profile(
        prompt_embeddings(model, prompts, device),
        spec.evaluation.embedding_dim,
        out_dir,
        {"prompt_tokens_p95": metrics["prompt_tokens_p95"], "n": len(table)},
    )
    reference["prompt_embedding"] = list(projected)
    files.append(summary)
    return Evaluation(metrics=metrics, report=report, files=files, reference=reference)


def _eval_inputs(test: pd.DataFrame, eval_samples: int | None) -> pd.DataFrame:
    """A fixed sample of the test split in its original order (all of it when None or larger)."""
    if eval_samples is None or eval_samples >= len(test):
        return test
    return test.sample(n=eval_samples, random_state=_SAMPLE_SEED).sort_index()


def _score_outputs(
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


def _cost_notes(single: DecodeRun, batched: DecodeRun, cost_per_hour_usd: float) -> dict:
    return {
        "clock": "wall",
        "threads": torch.get_num_threads(),
        "latency_from": "batch 1: each request decoded alone",
        "cost_from": f"measured seconds per request at batch {batched.batch_size} "
        f"(wall time of the batched run / requests) x ${cost_per_hour_usd}/hour",
        "signals": "on (eager attention, lookback ratios), as online hallucination flagging needs",
        "wall_s": {"batch1": single.wall_s, f"batch{batched.batch_size}": batched.wall_s},
    }


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
