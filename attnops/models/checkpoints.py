"""Training checkpoints: the best weights so far and the last state to resume from.

`<folder>/best/` holds the best weights by validation macro-F1; `<folder>/last/` the weights,
optimizer, scheduler, random states and `TrainState` of the last checkpoint, written to a
temporary folder and renamed so a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model


@dataclass
class TrainState:
    """Everything besides weights and optimizer moments that a resumed run needs."""

    step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    best_macro_f1: float = -1.0
    evals_without_improvement: int = 0
    real_tokens: int = 0
    """Non-pad tokens trained on, over all ranks."""
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def cpu_copy(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_best(folder: Path, model) -> None:
    (folder / "best").mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "best" / "model.safetensors"))


def load_best(folder: Path, model) -> dict[str, torch.Tensor]:
    """Read the best weights without disturbing the weights the run continues from."""
    current = cpu_copy(model)
    load_model(model, str(folder / "best" / "model.safetensors"))
    best = cpu_copy(model)
    model.load_state_dict(current)
    return best


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: TrainState) -> None:
    # Write to a temporary folder and rename, so a crash mid-write leaves the old one intact.
    tmp, last = folder / "last.tmp", folder / "last"
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "state": asdict(state),
        },
        tmp / "trainer_state.pt",
    )
    shutil.rmtree(last, ignore_errors=True)
    tmp.rename(last)


def read_checkpoint(folder: Path, model) -> dict:
    """Load the weights into `model`; return the rest (on the CPU, so it can be broadcast)."""
    last = folder / "last"
    load_model(model, str(last / "model.safetensors"))
    return torch.load(last / "trainer_state.pt", weights_only=True, map_location="cpu")


def restore(saved: dict, optimizer, scheduler) -> TrainState:
    optimizer.load_state_dict(saved["optimizer"])  # moves the moments to the params' device
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return TrainState(**saved["state"])


def prepare_checkpoint_dir(
    checkpoint_dir: Path, data_sha256: str, settings: list, *, resume: bool, what: str
) -> None:
    """Refuse to resume another run's checkpoint; start clean unless resuming.

    Args:
        settings: the spec sections (as dicts) a checkpoint depends on; with the data hash
            they fingerprint the run.
        what: those sections, named for the message (e.g. "model/training").
    """
    marker = checkpoint_dir / "run_fingerprint"
    encoded = json.dumps(settings, sort_keys=True)
    fingerprint = hashlib.sha256(f"{data_sha256}|{encoded}".encode()).hexdigest()
    if resume and marker.is_file() and marker.read_text() != fingerprint:
        raise ValueError(
            f"checkpoint in {checkpoint_dir} was written for other data or other {what} "
            "settings; run without --resume to start over"
        )
    if not resume:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
