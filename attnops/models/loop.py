"""The steps both fine-tuning loops (classifier and generator) take the same way.

The epoch loop, batch order, gradient-accumulation groups, the optimizer step, when to
evaluate, when to stop early and the run card's printout: the trainers differ in their model,
loss and validation score (their train step and evaluation), not in these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from attnops.models.batching import length_grouped_batches
from attnops.models.checkpoints import cpu_copy, save_best, save_checkpoint
from attnops.models.recipe import Plan
from attnops.spec import TrainingSpec


@dataclass
class LossInterval:
    """Mean train loss since the last evaluation: the fit diagnosis compares the last two."""

    total: float = 0.0
    steps: int = 0

    def add(self, loss: float) -> None:
        self.total += loss
        self.steps += 1

    def mean(self) -> float:
        return self.total / self.steps

    def reset(self) -> None:
        self.total, self.steps = 0.0, 0


TrainStep = Callable[[list[np.ndarray], int], dict[str, float] | None]
"""Forward and backward micro-batch `b` of the epoch's batches; after an optimizer step, the
step's metrics (with `train_loss`), else None."""
Evaluate = Callable[[dict[str, float]], None]
"""Score validation, checkpoint and set the run's `stopped_early`, given the last step's metrics."""


def train_epoch(
    run,
    lengths: np.ndarray,
    cfg: TrainingSpec,
    bar: tqdm,
    train_step: TrainStep,
    evaluate: Evaluate,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> None:
    """Train on the rest of the current epoch, evaluating when due; return when it ends, the
    step budget is spent or early stopping ends the run.

    Args:
        run: either trainer's `Run`; its `state` (step, epoch, batches_done_in_epoch,
            train_seconds), `plan` and `stopped_early` are read and advanced here.
        lengths: tokens per training example, which the epoch's batches are grouped by.
        cfg: the spec's `training` section.
        bar: the progress bar, one tick per optimizer step.
        train_step: the trainer's step over one micro-batch.
        evaluate: the trainer's evaluation and checkpoint.
        on_step: called after every optimizer step with (step, metrics); may raise to stop.
    """
    state = run.state
    batches = epoch_batches(lengths, cfg, state.epoch)
    started = time.perf_counter()
    for b in range(state.batches_done_in_epoch, len(batches)):
        metrics = train_step(batches, b)
        if metrics is None:  # still accumulating gradients
            continue
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train_loss']:.3f}")
        if on_step:
            on_step(state.step, metrics)
        last_of_epoch = b + 1 == len(batches)
        if evaluation_due(state.step, run.plan, last_of_epoch):
            if last_of_epoch:
                state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
            # Evaluation and checkpoints are not training time (tokens per second).
            state.train_seconds += time.perf_counter() - started
            evaluate(metrics)
            started = time.perf_counter()
        if run.stopped_early or state.step >= run.plan.total_steps:
            return


def print_run_card(card: dict) -> None:
    """The run card's facts on one line, then one line per reason (`why`)."""
    facts = ", ".join(f"{k}={v}" for k, v in card.items() if k != "why")
    print(f"run card: {facts}\n" + "\n".join(f"  {k}: {v}" for k, v in card["why"].items()))


def epoch_batches(lengths: np.ndarray, cfg: TrainingSpec, epoch: int) -> list[np.ndarray]:
    """The epoch's length-grouped batches: a pure function of (seed, epoch), so a resumed run
    (or another rank) rebuilds the same ones."""
    return length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed * 1_000 + epoch)


def accumulation_group(batch: int, n_batches: int, grad_accum_steps: int) -> tuple[int, bool]:
    """Micro-batch `batch`'s group: its size, and whether the optimizer steps after it.

    The optimizer steps on `(batch + 1) % grad_accum_steps == 0` and after an epoch's last
    micro-batch, so an epoch's last group can be shorter than grad_accum_steps; dividing each
    micro-batch's loss by the group's size makes the step average over its micro-batches.
    """
    group_start = batch - batch % grad_accum_steps
    group_size = min(grad_accum_steps, n_batches - group_start)
    steps_now = not (batch + 1) % grad_accum_steps or batch + 1 == n_batches
    return group_size, steps_now


def optimizer_step(
    optimizer, scheduler, trainable: list[torch.Tensor], max_grad_norm: float | None
) -> torch.Tensor | None:
    """Clip (when set), step the optimizer and the schedule, drop the gradients.

    Returns:
        The gradient norm before clipping, on the device (None when not clipping).
    """
    grad_norm = None
    if max_grad_norm:
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def evaluation_due(step: int, plan: Plan, last_of_epoch: bool) -> bool:
    """Every `plan.eval_every_steps` optimizer steps, at the last step and at each epoch's end."""
    return step % plan.eval_every_steps == 0 or step == plan.total_steps or last_of_epoch


def keep_best_and_checkpoint(run, improved: bool, cfg: TrainingSpec) -> None:
    """After an evaluation: keep the weights when the score `improved` (else count an
    evaluation without improvement), write the checkpoint, and decide whether to stop early.

    Args:
        run: either trainer's `Run`, its best score already updated.
        improved: whether the evaluation beat the best score so far.
        cfg: the spec's `training` section.
    """
    state, model = run.state, run.model
    if improved:
        state.evals_without_improvement = 0
        run.best_weights = cpu_copy(model)
        if run.checkpoint_dir:
            save_best(run.checkpoint_dir, model)
    elif state.step > run.plan.warmup_steps:  # no verdict while still warming up
        state.evals_without_improvement += 1
    if run.checkpoint_dir:
        save_checkpoint(run.checkpoint_dir, model, run.optimizer, run.scheduler, state)
    run.stopped_early = patience_ran_out(cfg, state.evals_without_improvement)


def patience_ran_out(cfg: TrainingSpec, evals_without_improvement: int) -> bool:
    """Whether early stopping ends the run (never when `early_stopping_patience` is unset)."""
    patience = cfg.early_stopping_patience
    return bool(patience and evals_without_improvement >= patience)
