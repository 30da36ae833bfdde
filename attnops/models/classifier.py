"""Fine-tune a classifier from a spec: the call the train flow, benchmarks and GPU checks share."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnops.models.batching import encode
from attnops.models.calibration import fit_temperature, fold_temperature
from attnops.models.data import TEXT, LabelledData
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier, load_tokenizer, pick_device, seed_everything
from attnops.models.train import StepCallback, TrainResult, fine_tune
from attnops.spec import PipelineSpec


@dataclass(frozen=True)
class TrainedClassifier:
    model: object
    tokenizer: object
    result: TrainResult
    device: torch.device
    temperature: float
    """Calibration temperature folded into the output layer (1.0: not calibrated)."""


def train_classifier(
    spec: PipelineSpec,
    data: LabelledData,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_step: StepCallback | None = None,
    progress: bool = True,
) -> TrainedClassifier:
    """Build the spec's model over the data's labels and fine-tune it on the train split.

    With `resume`, training continues from the checkpoint in `checkpoint_dir`, which must
    have been written for the same data and the same model and training settings; without
    it, any old checkpoint is discarded.
    """
    if checkpoint_dir is not None:
        marker = checkpoint_dir / "run_fingerprint"
        settings = json.dumps([spec.model.model_dump(), spec.training.model_dump()], sort_keys=True)
        fingerprint = hashlib.sha256(f"{data.data_sha256}|{settings}".encode()).hexdigest()
        if resume and marker.is_file() and marker.read_text() != fingerprint:
            raise ValueError(
                f"checkpoint in {checkpoint_dir} was written for other data or other model/"
                "training settings; run without --resume to start over"
            )
        if not resume:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
    seed_everything(spec.training)
    device = pick_device(spec.training.device)
    tokenizer = load_tokenizer(spec.model)
    model = build_classifier(spec.model, data.label_names)

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
    )
    temperature = 1.0
    if spec.training.calibrate:
        probs = predict(model, validation, pad_id=tokenizer.pad_token_id, device=device).probs
        temperature = fit_temperature(probs, np.asarray(validation.labels))
        fold_temperature(model, temperature)
        print(f"calibration: temperature {temperature:.3f} folded into the output layer")
    return TrainedClassifier(
        model=model, tokenizer=tokenizer, result=result, device=device, temperature=temperature
    )
