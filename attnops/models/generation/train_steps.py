"""A generator fine-tuning run's steps: a train step, a validation loss and checkpoint.

`train.train_generator` sets the run up and runs `loop.train_epoch` with them until the step
budget is spent or early stopping ends it. One process: generation has no DDP yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attnops.models import loop, recipe
from attnops.models.generation.loss import collate, target_loss, validation_loss
from attnops.spec import TrainingSpec


@dataclass
class GenerationState:
    """Everything besides weights and optimizer moments that a resumed run needs."""

    step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    best_val_loss: float = math.inf
    evals_without_improvement: int = 0
    real_tokens: int = 0
    """Non-pad tokens (prompt and target) trained on."""
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Run:
    """One fine-tuning run: where it trains, what it steps, where it is, what it decided."""

    model: torch.nn.Module
    """What is trained and checkpointed: the causal LM, or its LoRA (peft) wrapper."""
    decoder: Callable
    """The model's decoder stack, compiled when `training.compile`."""
    head: torch.nn.Module
    """The output layer, run only at the positions that predict a target token."""
    autocast: torch.autocast
    trainable: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: recipe.Plan
    pad_id: int
    device: torch.device
    checkpoint_dir: Path | None
    train_lengths: np.ndarray
    """Tokens (prompt and target) per training example."""
    state: GenerationState
    best_weights: dict[str, torch.Tensor] | None
    stopped_early: bool
    interval: loop.LossInterval = field(default_factory=loop.LossInterval)


def train_step(
    run: Run, train: list[dict], batches: list[np.ndarray], b: int, cfg: TrainingSpec
) -> dict[str, float] | None:
    """Forward and backward micro-batch `b`; step the optimizer when it ends an accumulation
    group.

    Returns:
        The micro-batch's train loss (per target token) and the learning rate after an
        optimizer step; None when the optimizer did not step.
    """
    state = run.state
    batch = collate(train, batches[b], run.pad_id, run.device)
    # Dividing by the group's size averages a step's micro-batches.
    group_size, steps_now = loop.accumulation_group(b, len(batches), cfg.grad_accum_steps)
    with run.autocast:
        loss = target_loss(run.decoder, run.head, batch)
    (loss / group_size).backward()
    state.real_tokens += int(run.train_lengths[batches[b]].sum())  # host-side: no device sync
    if not steps_now:
        return None
    loop.optimizer_step(run.optimizer, run.scheduler, run.trainable, cfg.max_grad_norm)
    state.step += 1
    state.batches_done_in_epoch = b + 1
    metrics = {"train_loss": loss.item(), "learning_rate": run.scheduler.get_last_lr()[0]}
    run.interval.add(metrics["train_loss"])
    return metrics


def evaluate_and_checkpoint(
    run: Run, validation: list[dict], metrics: dict[str, float], cfg: TrainingSpec
) -> None:
    """Score validation loss, keep the best weights, write the checkpoint, and decide
    whether to stop early."""
    state, model = run.state, run.model
    val_loss = validation_loss(run.decoder, run.head, validation, run.pad_id, run.device, cfg)
    model.train()
    state.history.append(
        {"step": state.step, "val_loss": val_loss, "train_loss_mean": run.interval.mean()} | metrics
    )
    improved = val_loss < state.best_val_loss
    if improved:
        state.best_val_loss = val_loss
    loop.keep_best_and_checkpoint(run, improved, cfg)
    run.interval.reset()
