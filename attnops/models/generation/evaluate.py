"""Evaluate a fine-tuned generator: quality, hallucination, serving cost, determinism, heads.

The same `spec.generation.eval_samples` test inputs (a fixed, seed-0 sample of the test
split, so two versions evaluated on the same data see the same inputs) are decoded greedily
by the model and, when given, by the untuned base model. The per-input table keeps the
scores of both side by side for the gate's paired tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnops.models import report_json
from attnops.models.evaluate import EVALUATION_JSON, Evaluation
from attnops.models.generation.cost import THROUGHPUT_BATCH_SIZE, DecodeRun, decode_timed
from attnops.models.generation.data import (
    CONTEXT,
    SOURCE,
    GenerationData,
    cut_counts,
    prompt_ids,
)
from attnops.models.generation.detector import DETECTORS, HallucinationDetector
from attnops.models.generation.evaluate_steps import (
    PARTS,
    SAMPLE_SEED,
    DecodeRuns,
    add_baseline,
    cost_notes,
    decode_eval_inputs,
    eval_inputs,
    per_input_table,
)
from attnops.models.generation.heads import HeadReport, head_report
from attnops.models.generation.prompt_profile import prompt_embeddings, write_prompt_profile
from attnops.models.threads import use_threads
from attnops.spec import PipelineSpec
from attnops.spec_generation import GenerationSpec

PER_INPUT = "per_input.parquet"


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
    frame = eval_inputs(data.splits["test"], gen.eval_samples)
    prompts = [
        prompt_ids(tokenizer, gen, s, c) for s, c in zip(frame[SOURCE], frame[CONTEXT], strict=True)
    ]
    decoded = decode_eval_inputs(model, tokenizer, prompts, gen, device)
    table = per_input_table(frame, prompts, decoded.single, detector)
    metrics = _metrics(table, decoded)
    cut = cut_counts(tokenizer, gen, frame)
    metrics["prompts_cut_share"] = cut["prompts_cut"] / max(cut["rows"], 1)
    lookback = np.stack([d.lookback for d in decoded.single.outputs])
    heads = head_report(model, prompts[: spec.evaluation.probe_size], lookback, device=device)
    metrics |= heads.metrics()
    baseline_report = None
    if base_model is not None:
        base_run = decode_timed(
            base_model,
            tokenizer,
            prompts,
            batch_size=THROUGHPUT_BATCH_SIZE,
            max_new_tokens=gen.max_new_tokens,
            device=device,
        )
        baseline_report = add_baseline(table, metrics, frame, base_run, detector)

    report = _report(
        metrics,
        table,
        decoded,
        heads,
        detector,
        baseline_report,
        n_test_rows=len(data.splits["test"]),
        probe_size=min(spec.evaluation.probe_size, len(prompts)),
        gen=gen,
    )
    if detector_report:
        report["detector"] = detector_report
        metrics |= {f"detector_auc_{k}": v for k, v in detector_report["overall"].items()}
    if fit:
        report["fit"] = fit
        # Underfit = the budget ran out while train and validation loss were still falling.
        metrics["underfit"] = float(bool(fit.get("still_learning")))
    files = heads.write_pngs(out_dir)
    files.append(out_dir / EVALUATION_JSON)
    files[-1].write_text(report_json.dumps(report))
    files.append(out_dir / PER_INPUT)
    table.to_parquet(files[-1], index=False)
    reference, summary = _reference(
        model, prompts, table, decoded.single, metrics, spec, device, out_dir
    )
    files.append(summary)
    return Evaluation(metrics=metrics, report=report, files=files, reference=reference)


def _metrics(table: pd.DataFrame, decoded: DecodeRuns) -> dict[str, float]:
    """Quality, hallucination, cost and determinism scalars (heads and baseline add more)."""
    return {
        "test_rouge_l": float(table["rouge_l"].mean()),
        "test_chrf": float(table["chrf"].mean()),
        "test_fact_recall": float(table["fact_recall"].mean()),
        "test_hallucination_rate": float(table["hallucinated"].mean()),
        "test_hallucination_score_mean": float(table["hallucination_score"].mean()),
        **{
            f"test_detector_{p}_score_mean": float(table[f"detector_{p}_score"].mean())
            for p in PARTS
        },
        **decoded.cost,
        "determinism_rate": float(np.mean(decoded.repeated)),
        "n_eval_inputs": float(len(table)),
    }


def _report(
    metrics: dict[str, float],
    table: pd.DataFrame,
    decoded: DecodeRuns,
    heads: HeadReport,
    detector: HallucinationDetector,
    baseline_report: dict[str, object] | None,
    *,
    n_test_rows: int,
    probe_size: int,
    gen: GenerationSpec,
) -> dict[str, object]:
    """What `evaluation.json` holds (the detector report and the fit join it when given)."""
    return {
        "metrics": metrics,
        "eval_inputs": {
            "n": len(table),
            "test_rows": n_test_rows,
            "sample_seed": SAMPLE_SEED,
            "request_index": table["request_index"].tolist(),
        },
        "decoding": {
            "greedy": True,
            "max_new_tokens": gen.max_new_tokens,
            "signals": True,
            "stopped_at_eos_share": float(table["stopped_at_eos"].mean()),
        },
        "cost": cost_notes(decoded.single, decoded.batched, gen.cost_per_hour_usd),
        "determinism": {"inputs": len(decoded.repeated), "repeated": decoded.repeated},
        "hallucination": {
            "threshold": detector.threshold,
            "parts": list(DETECTORS),
            "score": "combined P(hallucinated); detector_<part>_score: one view alone",
        },
        "attention": heads.summary() | {"probe_size": probe_size},
        "baseline": baseline_report,
    }


def _reference(
    model,
    prompts: list[list[int]],
    table: pd.DataFrame,
    single: DecodeRun,
    metrics: dict[str, float],
    spec: PipelineSpec,
    device: torch.device,
    out_dir: Path,
) -> tuple[pd.DataFrame, Path]:
    """The reference records (one per eval input) and the prompt profile they project onto.

    Returns:
        The records and the written profile summary.
    """
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
    return reference, summary
