"""Fine-tune a classifier from a spec: the call the train flow, benchmarks and GPU checks share.

In one process, or under torchrun when the spec's `training.distributed` asks for more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnops.models import distributed, recipe
from attnops.models.batching import encode
from attnops.models.calibration import fit_temperature, fold_temperature
from attnops.models.checkpoints import prepare_checkpoint_dir
from attnops.models.data import TEXT, LabelledData
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier, load_tokenizer, seed_everything
from attnops.models.torchrun_launch import train_with_torchrun
from attnops.models.train import (
    EvaluationCallback,
    StepCallback,
    TrainedClassifier,
    fine_tune,
)
from attnops.spec import PipelineSpec


def train_classifier(
    spec: PipelineSpec,
    data: LabelledData,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_step: StepCallback | None = None,
    progress: bool = True,
    on_evaluate: EvaluationCallback | None = None,
) -> TrainedClassifier:
    """Build the spec's model over the data's labels and fine-tune it on the train split.

    With `resume`, training continues from the checkpoint in `checkpoint_dir`, which must
    have been written for the same data and the same model and training settings (the
    number of processes may differ); without it, any old checkpoint is discarded.

    When `spec.training.distributed` asks for more than one process and this process is
    not one of a torchrun job already, the fine-tuning runs under torchrun and the trained
    model comes back here (`on_step` is not available then). Inside a torchrun job every
    rank calls this with the same arguments and the same seed; only rank 0 touches the
    checkpoints, evaluates and calibrates, and only its result holds the best weights.
    """
    world = distributed.world()
    if checkpoint_dir is not None and world.is_main:
        _prepare_checkpoints(spec, data, checkpoint_dir, resume)
    if spec.training.distributed.world_size > 1 and not distributed.in_process_group():
        if on_step is not None or on_evaluate is not None:
            raise ValueError("on_step/on_evaluate cannot follow a torchrun job; use one process")
        return train_with_torchrun(
            spec, data, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress
        )
    seed_everything(spec.training)
    device = distributed.rank_device(spec.training.device)
    tokenizer = load_tokenizer(spec.model)
    model = build_classifier(spec.model, data.label_names)
    freeze, why_freeze = recipe.freeze_embeddings(spec.training, spec.model)
    if freeze:
        model.get_input_embeddings().weight.requires_grad_(False)

    def encoded(split: str):
        frame = data.in_scope(split)
        return encode(tokenizer, frame[TEXT].tolist(), spec.model.max_length, data.label_ids(frame))

    validation = encoded("validation")
    result = fine_tune(
        model,
        encoded("train"),
        validation,
        spec.training,
        pad_id=tokenizer.pad_token_id,
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        on_step=on_step,
        progress=progress,
        on_evaluate=on_evaluate,
        card_notes={"word_embeddings": why_freeze},
    )
    temperature = 1.0
    if spec.training.calibrate and world.is_main:
        # In the precision served: the temperature corrects the logits the server computes.
        probs = predict(
            model,
            validation,
            pad_id=tokenizer.pad_token_id,
            device=device,
            bf16_on_cpu=spec.serving.bf16,
        ).probs
        temperature = fit_temperature(probs, np.asarray(validation.labels))
        fold_temperature(model, temperature)
        print(f"calibration: temperature {temperature:.3f} folded into the output layer")
    return TrainedClassifier(
        model=model, tokenizer=tokenizer, result=result, device=device, temperature=temperature
    )


def _prepare_checkpoints(
    spec: PipelineSpec, data: LabelledData, checkpoint_dir: Path, resume: bool
) -> None:
    # Checkpoints do not depend on the number of processes: leave `distributed` out.
    training = spec.training.model_dump(exclude={"distributed"})
    prepare_checkpoint_dir(
        checkpoint_dir,
        data.data_sha256,
        [spec.model.model_dump(), training],
        resume=resume,
        what="model/training",
    )
