"""The seam between the pipeline and a task family (classification, generation).

Flows and the CLI call `family_for(spec)` and then the same steps for every task: load the
data, fine-tune, evaluate, and describe what to register. Each family answers with its own
data type, trainer, evaluation and registration details; the flows do not branch on the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd

from attnops.models.evaluate import Evaluation
from attnops.spec import PipelineSpec


@dataclass(frozen=True)
class TrainingEvidence:
    """What a fine-tune logs to its MLflow run besides the evaluation."""

    history: list[dict[str, float]]
    """One row per evaluation during training, with its `step`."""
    scalars: dict[str, float]
    run_card: dict[str, object]
    data_fingerprint: dict[str, str]
    data_checks: dict[str, object]


@dataclass(frozen=True)
class Registration:
    """The task-specific part of a model version: how MLflow stores it and what it says."""

    mlflow_task: str
    """`mlflow.transformers` task, e.g. text-classification or text-generation."""
    tags: dict[str, str]
    input_example: list[str]
    output_example: pd.DataFrame
    metadata: dict[str, object]
    card: str
    """The model card (markdown)."""


class TaskFamily(Protocol):
    """One task family's steps; `data` and `trained` are the family's own types."""

    name: str

    def load_data(self, spec: PipelineSpec, spec_path: str): ...

    def describe_data(self, data) -> str: ...

    def fine_tune(self, spec: PipelineSpec, data, *, checkpoint_dir: Path, resume: bool): ...

    def evaluate(self, spec: PipelineSpec, trained, data, out_dir: Path) -> Evaluation: ...

    def training_evidence(self, data, trained) -> TrainingEvidence: ...

    def registration(
        self, spec: PipelineSpec, data, evaluation: Evaluation, tags: dict[str, str]
    ) -> Registration: ...

    def summary(self, metrics: dict[str, float]) -> str: ...

    def headline(self, metrics: dict[str, float]) -> list[tuple[str, float | None]]:
        """(label, value) rows `attnops train` prints; None = not measured."""
        ...


def family_for(spec: PipelineSpec) -> TaskFamily:
    """The spec's task family (generation is imported only when used: peft, rouge, ...)."""
    if spec.task == "generation":
        from attnops.models.generation.family import GenerationFamily

        return GenerationFamily()
    from attnops.models.classification_family import ClassificationFamily

    return ClassificationFamily()
