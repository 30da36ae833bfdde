"""Classification behind the task-family seam: encoder + head over labelled texts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from attnops.models.card import model_card
from attnops.models.classifier import train_classifier
from attnops.models.data import LABEL, TEXT, LabelledData, load_labelled_data
from attnops.models.evaluate import Evaluation, evaluate_classifier
from attnops.models.task_family import Registration, TrainingEvidence
from attnops.models.train import TrainedClassifier
from attnops.spec import PipelineSpec

TAG = "attnops."


class ClassificationFamily:
    name = "classification"

    def load_data(self, spec: PipelineSpec, spec_path: str) -> LabelledData:
        return load_labelled_data(spec.data, spec_path)

    def describe_data(self, data: LabelledData) -> str:
        counts = {name: len(frame) for name, frame in data.splits.items()}
        shared = ", ".join(f"{leak.later} in {leak.earlier} {leak.near}" for leak in data.leakage)
        return (
            f"data: {counts}, {len(data.label_names)} classes, sha256 {data.data_sha256[:12]}\n"
            f"texts shared across splits (exact or near): {shared}"
        )

    def fine_tune(
        self, spec: PipelineSpec, data: LabelledData, *, checkpoint_dir: Path, resume: bool
    ) -> TrainedClassifier:
        return train_classifier(spec, data, checkpoint_dir=checkpoint_dir, resume=resume)

    def evaluate(
        self, spec: PipelineSpec, trained: TrainedClassifier, data: LabelledData, out_dir: Path
    ) -> Evaluation:
        return evaluate_classifier(
            trained.model,
            trained.tokenizer,
            data,
            spec,
            device=trained.device,
            out_dir=out_dir,
            fit=trained.result.fit,
        )

    def training_evidence(self, data: LabelledData, trained: TrainedClassifier) -> TrainingEvidence:
        result = trained.result
        return TrainingEvidence(
            history=result.history,
            scalars={
                "train_tokens_per_s": result.tokens_per_s,
                "train_seconds": result.train_seconds,
                "optimizer_steps": result.optimizer_steps,
                "best_val_macro_f1": result.best_val_macro_f1,
                "calibration_temperature": trained.temperature,
            },
            run_card={**result.run_card, "stopped_early": result.stopped_early},
            data_fingerprint={"data_sha256": data.data_sha256, **data.sha256},
            data_checks={"leakage": [leak.as_dict() for leak in data.leakage]},
        )

    def registration(
        self, spec: PipelineSpec, data: LabelledData, evaluation: Evaluation, tags: dict[str, str]
    ) -> Registration:
        specific = {
            f"{TAG}labels": json.dumps(list(data.label_names)),
            f"{TAG}test_macro_f1": f"{evaluation.metrics['test_macro_f1']:.4f}",
        }
        examples = _input_example(data)
        return Registration(
            mlflow_task="text-classification",
            tags=specific,
            input_example=examples,
            output_example=pd.DataFrame(
                {"label": [data.label_names[0]] * len(examples), "score": [0.5] * len(examples)}
            ),
            metadata={"label_names": list(data.label_names), "spec": spec.model_dump(mode="json")},
            card=model_card(spec, data, evaluation, {**tags, **specific}),
        )

    def summary(self, metrics: dict[str, float]) -> str:
        baseline = metrics.get("baseline_macro_f1")
        return f"test macro-F1 {metrics['test_macro_f1']:.3f}" + (
            f" vs TF-IDF baseline {baseline:.3f}" if baseline is not None else ""
        )

    def headline(self, metrics: dict[str, float]) -> list[tuple[str, float | None]]:
        return [
            ("test macro-F1", metrics["test_macro_f1"]),
            ("TF-IDF baseline macro-F1", metrics.get("baseline_macro_f1")),
            ("calibration error (ECE)", metrics["test_ece"]),
            ("unsupported assertion rate", metrics.get("unsupported_assertion_rate")),
            ("latency p95 at batch 1 (ms)", metrics["latency_ms_p95"]),
            ("heads collapsed by fine-tuning", metrics["attention_collapsed_heads"]),
        ]


def _input_example(data: LabelledData, n: int = 2) -> list[str]:
    """Short validation texts without digits or '@', so the example carries no PII."""
    frame = data.in_scope("validation")
    clean = frame[~frame[TEXT].str.contains(r"[\d@]", regex=True)]
    chosen = (clean if len(clean) >= n else frame).sort_values(LABEL).head(n)
    return chosen[TEXT].tolist()
