"""The steps both fine-tuning loops (classifier and generator) take the same way.

Batch order, gradient-accumulation groups, the optimizer step, when to evaluate, when to stop
early and the run card's printout: the trainers differ in their model, loss and validation
score, not in these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attnops.models.batching import length_grouped_batches
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


def patience_ran_out(cfg: TrainingSpec, evals_without_improvement: int) -> bool:
    """Whether early stopping ends the run (never when `early_stopping_patience` is unset)."""
    patience = cfg.early_stopping_patience
    return bool(patience and evals_without_improvement >= patience)
