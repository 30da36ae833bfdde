"""Generation behind the task-family seam: a causal LM writing a target grounded in its input.

Evaluation fits the version's own hallucination detector first (its attention view reads
this model's lookback ratios), then decodes the test inputs with the fine-tuned model and,
side by side, the untuned base; the detector is saved with the evaluation, so the gate,
serving and monitoring score outputs with the same weights and threshold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from attnops.models.evaluate import Evaluation
from attnops.models.generation.altered_twins import NAME as TWINS_NAME
from attnops.models.generation.altered_twins import altered_twins
from attnops.models.generation.base import load_base_model, model_cache_dir
from attnops.models.generation.card import generation_card
from attnops.models.generation.data import (
    CONTEXT,
    SOURCE,
    GenerationData,
    load_generation_data,
)
from attnops.models.generation.detector import DETECTOR_JSON
from attnops.models.generation.detector_fit import fit_detector, load_labelled_outputs
from attnops.models.generation.evaluate import evaluate_generator
from attnops.models.generation.train import TrainedGenerator, train_generator
from attnops.models.task_family import Registration, TrainingEvidence
from attnops.models.threads import use_threads
from attnops.settings import Settings
from attnops.spec import PipelineSpec

TAG = "attnops."


class GenerationFamily:
    name = "generation"

    def load_data(self, spec: PipelineSpec, spec_path: str) -> GenerationData:
        data = load_generation_data(spec.data, spec_path)
        # Read now, so a bad labelled set stops the run before training, not after it.
        labelled = (
            load_labelled_outputs(spec, spec_path)
            if spec.generation.hallucination_set is not None
            else altered_twins(
                data.splits["validation"],
                seed=spec.training.seed,
                fit_share=spec.generation.detector_fit_share,
                split=data.paths["validation"],
            )
        )
        return dataclasses.replace(data, splits={**data.splits, "labelled": labelled})

    def describe_data(self, data: GenerationData) -> str:
        counts = {name: len(frame) for name, frame in data.splits.items()}
        shared = ", ".join(f"{leak.later} in {leak.earlier} {leak.near}" for leak in data.leakage)
        return (
            f"data: {counts} (source/context/target), sha256 {data.data_sha256[:12]}\n"
            f"inputs shared across splits (exact or near): {shared}"
        )

    def fine_tune(
        self, spec: PipelineSpec, data: GenerationData, *, checkpoint_dir: Path, resume: bool
    ) -> TrainedGenerator:
        trained = train_generator(
            spec, data, cache_dir=_cache_dir(), checkpoint_dir=checkpoint_dir, resume=resume
        )
        # Stored with the version: serving decodes as evaluation did (greedy, same length).
        config = trained.model.generation_config
        config.do_sample, config.max_new_tokens = False, spec.generation.max_new_tokens
        config.temperature = config.top_p = config.top_k = None
        return trained

    def evaluate(
        self, spec: PipelineSpec, trained: TrainedGenerator, data: GenerationData, out_dir: Path
    ) -> Evaluation:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Before the detector's forward passes: the training left its own thread count.
        use_threads(spec.training.num_threads, stage="evaluation")
        labelled_name = spec.generation.hallucination_set or TWINS_NAME
        detector, detector_report = fit_detector(
            trained.model,
            trained.tokenizer,
            spec,
            data.splits["labelled"],
            device=trained.device,
            name=labelled_name,
        )
        print(
            f"hallucination detector fitted: held-out ROC AUC "
            f"{detector_report['overall']['combined']:.3f} (text "
            f"{detector_report['overall']['text']:.3f}, attention "
            f"{detector_report['overall']['attention']:.3f}, log-prob "
            f"{detector_report['overall']['logprob']:.3f})"
        )
        base = None
        if spec.generation.zero_shot_baseline:
            base, _ = load_base_model(spec.model, _cache_dir())
            base.to(trained.device)
        evaluation = evaluate_generator(
            trained.model,
            trained.tokenizer,
            data,
            spec,
            device=trained.device,
            out_dir=out_dir,
            detector=detector,
            detector_report=detector_report,
            base_model=base,
            fit=trained.result.fit,
        )
        detector_path = out_dir / DETECTOR_JSON
        detector_path.write_text(detector.to_json())
        return dataclasses.replace(evaluation, files=[*evaluation.files, detector_path])

    def training_evidence(
        self, data: GenerationData, trained: TrainedGenerator
    ) -> TrainingEvidence:
        result = trained.result
        return TrainingEvidence(
            history=result.history,
            scalars={
                "train_tokens_per_s": result.tokens_per_s,
                "train_seconds": result.train_seconds,
                "optimizer_steps": result.optimizer_steps,
                "best_val_loss": result.best_val_loss,
                "final_train_loss": result.final_train_loss,
            },
            run_card={**result.run_card, "stopped_early": result.stopped_early},
            data_fingerprint={"data_sha256": data.data_sha256, **data.paths},
            data_checks={
                "rows": {name: len(frame) for name, frame in data.splits.items()},
                "leakage": [leak.as_dict() for leak in data.leakage],
            },
        )

    def registration(
        self,
        spec: PipelineSpec,
        data: GenerationData,
        evaluation: Evaluation,
        tags: dict[str, str],
    ) -> Registration:
        m = evaluation.metrics
        specific = {
            f"{TAG}test_rouge_l": f"{m['test_rouge_l']:.4f}",
            f"{TAG}test_hallucination_rate": f"{m['test_hallucination_rate']:.4f}",
            f"{TAG}generation.lora": "merged" if spec.generation.lora else "none",
        }
        examples = _input_example(data)
        return Registration(
            mlflow_task="text-generation",
            tags=specific,
            input_example=examples,
            output_example=pd.DataFrame({"generated_text": ["..."] * len(examples)}),
            metadata={
                "spec": spec.model_dump(mode="json"),
                "instruction": spec.generation.instruction,
                "hallucination_detector": f"evaluation/{DETECTOR_JSON}",
            },
            card=generation_card(spec, data, evaluation, {**tags, **specific}),
        )

    def summary(self, metrics: dict[str, float]) -> str:
        text = (
            f"test ROUGE-L {metrics['test_rouge_l']:.3f}, hallucination rate "
            f"{metrics['test_hallucination_rate']:.3f}"
        )
        if "baseline_rouge_l" in metrics:
            text += (
                f" vs zero-shot base {metrics['baseline_rouge_l']:.3f} / "
                f"{metrics['baseline_hallucination_rate']:.3f}"
            )
        return text

    def headline(self, metrics: dict[str, float]) -> list[tuple[str, float | None]]:
        return [
            ("test ROUGE-L", metrics["test_rouge_l"]),
            ("zero-shot base ROUGE-L", metrics.get("baseline_rouge_l")),
            ("hallucination rate", metrics["test_hallucination_rate"]),
            ("zero-shot base hallucination rate", metrics.get("baseline_hallucination_rate")),
            ("detector ROC AUC (held out)", metrics.get("detector_auc_combined")),
            ("time to first token p95 (ms)", metrics["ttft_ms_p95"]),
            ("inter-token latency p95 (ms)", metrics["inter_token_ms_p95"]),
            ("cost per 1,000 requests (USD)", metrics["cost_per_1k_requests_usd"]),
        ]


def _cache_dir() -> Path:
    return model_cache_dir(Settings.from_env().home)


def _input_example(data: GenerationData, n: int = 1) -> list[str]:
    """Validation messages without digits or '@' (so no PII), with their article."""
    frame = data.splits["validation"]
    clean = frame[~frame[SOURCE].str.contains(r"[\d@]", regex=True)]
    rows = (clean if len(clean) >= n else frame).head(n)
    return [f"{c}\n\n{s}" if c else s for s, c in zip(rows[SOURCE], rows[CONTEXT], strict=True)]
