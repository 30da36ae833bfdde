"""The training recipe: what the spec's defaults resolve to for this data, and why.

A spec that leaves a training field unset gets a choice made here from the data and the
model (epochs from the number of optimizer steps an epoch gives, warmup from the planned
steps, head learning rate from the encoder's, frozen embeddings for pretrained weights).
Each choice comes with a one-line reason that the run card prints before training starts,
so a run that goes wrong can be traced to the choice that caused it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnops.spec import ModelSpec, TrainingSpec

HEAD_LEARNING_RATE = 2e-3
"""Default rate of the new head: a random linear layer over the encoder's features learns at
about this rate whatever the encoder (20x the default encoder rate of 1e-4)."""
AUTO_EPOCHS_TARGET_STEPS = 700
"""Without `epochs`, plan enough epochs for about this many optimizer steps (3 epochs of
BANKING77's 7,924 examples). The learning rate decays to zero over the plan, and the best
weights come from an annealed model: on BANKING77, 3 epochs of a 7-epoch plan (rate still
high) reached validation macro-F1 0.909, 2 epochs of a 2-epoch plan 0.927 (README "Training
recipe"). A budget too short for the data shows up as an `underfit` diagnosis."""
AUTO_EPOCHS_RANGE = (3, 30)
"""...but at least 3 epochs (a large data set) and at most 30 (a tiny one)."""


@dataclass(frozen=True)
class Plan:
    """The resolved training schedule, with the reason for each choice."""

    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    head_learning_rate: float
    eval_every_steps: int
    reasons: dict[str, str]


def head_learning_rate(cfg: TrainingSpec) -> float:
    """The spec's head rate, or the default: HEAD_LEARNING_RATE unless the encoder's is higher."""
    if cfg.head_learning_rate is not None:
        return cfg.head_learning_rate
    return max(HEAD_LEARNING_RATE, cfg.learning_rate)


def plan_training(cfg: TrainingSpec, n_examples: int) -> Plan:
    """Epochs, optimizer steps, warmup and evaluation cadence for `n_examples` examples."""
    # cfg.batch_size is the global micro-batch (all ranks together), so the step count,
    # the schedule and the examples per optimizer step do not depend on the world size.
    batches_per_epoch = math.ceil(n_examples / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    reasons = {}
    if cfg.epochs is None:
        low, high = AUTO_EPOCHS_RANGE
        epochs = min(max(math.ceil(AUTO_EPOCHS_TARGET_STEPS / steps_per_epoch), low), high)
        reasons["epochs"] = (
            f"up to {epochs}: default, about {AUTO_EPOCHS_TARGET_STEPS} optimizer steps at "
            f"{steps_per_epoch} per epoch (kept within {low}-{high} epochs)"
        )
    else:
        epochs = cfg.epochs
        reasons["epochs"] = f"up to {epochs}: set in the spec"
    total_steps = epochs * steps_per_epoch
    if cfg.max_steps is not None and cfg.max_steps < total_steps:
        total_steps = cfg.max_steps
        reasons["epochs"] += f", cut to max_steps {cfg.max_steps}"
    if cfg.early_stopping_patience:
        reasons["epochs"] += (
            f"; early stopping after {cfg.early_stopping_patience} evaluations without a "
            "better validation macro-F1"
        )
    else:
        reasons["epochs"] += "; no early stopping"

    warmup_steps = 0
    if cfg.warmup_ratio > 0:
        wanted = round(cfg.warmup_ratio * total_steps)
        warmup_steps = min(max(wanted, cfg.min_warmup_steps), cfg.max_warmup_steps, total_steps)
        reasons["warmup"] = (
            f"{warmup_steps} steps: warmup_ratio {cfg.warmup_ratio:g} of {total_steps} planned "
            f"steps, kept within {cfg.min_warmup_steps}-{cfg.max_warmup_steps}; "
            "then linear decay to zero"
        )
    else:
        reasons["warmup"] = "none (warmup_ratio 0); linear decay to zero"

    head_lr = head_learning_rate(cfg)
    if cfg.head_learning_rate is not None:
        reasons["head_learning_rate"] = f"{head_lr:g}: set in the spec"
    else:
        ratio = head_lr / cfg.learning_rate
        reasons["head_learning_rate"] = (
            f"{head_lr:g}: default, {ratio:.3g}x the encoder's {cfg.learning_rate:g} "
            "(the head starts from random weights)"
        )

    eval_every = cfg.eval_every_steps or steps_per_epoch
    reasons["eval_every_steps"] = (
        f"{eval_every}: set in the spec"
        if cfg.eval_every_steps
        else f"{eval_every}: default, once per epoch"
    )
    reasons["max_grad_norm"] = (
        f"clip at {cfg.max_grad_norm:g}" if cfg.max_grad_norm else "no clipping (None)"
    )
    return Plan(
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        head_learning_rate=head_lr,
        eval_every_steps=eval_every,
        reasons=reasons,
    )


def freeze_embeddings(cfg: TrainingSpec, model: ModelSpec) -> tuple[bool, str]:
    """Whether to keep the input word embeddings fixed, and why."""
    if cfg.freeze_embeddings is not None:
        state = "frozen" if cfg.freeze_embeddings else "trained"
        return cfg.freeze_embeddings, f"{state}: set in the spec"
    if model.config_overrides:
        return False, "trained: default for a randomly initialised model (config_overrides)"
    return True, (
        "frozen: default for pretrained weights (half of MiniLM's parameters need no "
        "optimizer update, at the same accuracy)"
    )
