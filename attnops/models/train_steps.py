"""A classifier fine-tuning run's steps: a train step, an evaluation and checkpoint.

`train.fine_tune` sets the run up and runs `loop.train_epoch` with them until the step budget
is spent or early stopping ends it. Every rank takes every step; rank 0 alone evaluates and
writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from attnops.models import distributed, loop, recipe
from attnops.models.batching import Encoded, iterate
from attnops.models.checkpoints import TrainState
from attnops.models.inference import predict
from attnops.spec import TrainingSpec

StepCallback = Callable[[int, dict[str, float]], None]
EvaluationCallback = Callable[[int, float, bool], None]
"""(step, validation macro-F1, whether the plan has no steps left after it)."""


@dataclass
class Run:
    """One fine-tuning run: where it trains, what it steps, where it is, what it decided."""

    model: torch.nn.Module
    """Unwrapped: evaluation and checkpoints use it."""
    ddp: DistributedDataParallel | None
    forward: Callable
    """What the loop calls: `model` or its DDP wrapper, compiled when `training.compile`."""
    autocast: torch.autocast
    trainable: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: recipe.Plan
    world: distributed.World
    pad_id: int
    device: torch.device
    checkpoint_dir: Path | None
    state: TrainState
    """What a checkpoint keeps besides the weights and the optimizer moments."""
    best_weights: dict[str, torch.Tensor] | None
    stopped_early: bool
    interval: loop.LossInterval = field(default_factory=loop.LossInterval)


def train_step(
    run: Run, train: Encoded, batches: list[np.ndarray], b: int, cfg: TrainingSpec
) -> dict[str, float] | None:
    """Forward and backward this rank's share of micro-batch `b`; step the optimizer when it
    ends an accumulation group.

    Returns:
        The step's train loss (over all ranks), gradient norm and learning rate; None when
        the optimizer did not step.
    """
    state = run.state
    mine, weight = distributed.shard(batches[b], run.world)
    _, batch = next(iterate(train, [mine], run.pad_id, run.device))
    # `weight` (1 in one process) makes DDP's average over ranks the mean over the whole
    # global micro-batch; dividing by the group's size averages a step's micro-batches.
    group_size, steps_now = loop.accumulation_group(b, len(batches), cfg.grad_accum_steps)
    # Accumulating micro-batches skip DDP's all-reduce; the last one of a group
    # reduces the summed gradients once.
    no_sync = (
        run.ddp.no_sync() if run.ddp is not None and not steps_now else contextlib.nullcontext()
    )
    with no_sync:
        with run.autocast:
            loss = run.forward(**batch).loss * weight / group_size
        loss.backward()
    state.real_tokens += int(train.lengths[batches[b]].sum())  # host-side: no GPU sync
    if not steps_now:
        return None
    grad_norm = loop.optimizer_step(run.optimizer, run.scheduler, run.trainable, cfg.max_grad_norm)
    state.step += 1
    state.batches_done_in_epoch = b + 1
    # One device sync per optimizer step for both numbers. The loss is the global
    # micro-batch's mean (grad_norm is already global: DDP reduced the gradients).
    last_loss = distributed.mean_over_ranks(loss.detach() * group_size, run.world)
    if grad_norm is None:
        metrics = {"train_loss": last_loss.item()}
    else:
        loss_value, norm_value = torch.stack([last_loss, grad_norm]).tolist()
        metrics = {"train_loss": loss_value, "grad_norm": norm_value}
    metrics["learning_rate"] = run.scheduler.get_last_lr()[0]
    run.interval.add(metrics["train_loss"])
    return metrics


def evaluate_and_checkpoint(
    run: Run,
    validation: Encoded,
    metrics: dict[str, float],
    cfg: TrainingSpec,
    on_evaluate: EvaluationCallback | None,
) -> None:
    """Rank 0 scores validation, keeps the best weights, writes the checkpoint and decides
    whether to stop early; then every rank learns that decision."""
    state, model = run.state, run.model
    if run.world.is_main:
        score = _val_macro_f1(model, validation, run.pad_id, run.device)
        state.history.append(
            {"step": state.step, "val_macro_f1": score, "train_loss_mean": run.interval.mean()}
            | metrics
        )
        improved = score > state.best_macro_f1
        if improved:
            state.best_macro_f1 = score
        loop.keep_best_and_checkpoint(run, improved, cfg)
        if on_evaluate:
            on_evaluate(state.step, score, state.step >= run.plan.total_steps)
    # The other ranks wait here while rank 0 evaluates and writes (bounded by
    # distributed.timeout_s), then all stop or go on together.
    run.stopped_early = distributed.broadcast_from_main(run.stopped_early, run.world)
    run.interval.reset()


def _val_macro_f1(model, validation: Encoded, pad_id: int, device) -> float:
    predicted = predict(model, validation, pad_id=pad_id, device=device).labels
    return macro_f1(np.asarray(validation.labels), np.asarray(predicted))


def macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the classes in `labels` or `predicted` (a class never right scores 0).

    sklearn's `f1_score(average="macro", zero_division=0)`, in numpy: the training loop
    picks its checkpoint with it on machines that have torch but not sklearn (GPU boxes).
    """
    classes = np.union1d(labels, predicted)
    hits = np.array([np.sum((labels == c) & (predicted == c)) for c in classes])
    wrong = np.array([np.sum(labels == c) + np.sum(predicted == c) for c in classes])
    return float(np.mean(2 * hits / wrong))
