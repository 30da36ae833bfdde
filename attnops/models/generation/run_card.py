"""What a generation training run reports: the run card before, the fit diagnosis after."""

from __future__ import annotations

import math

from attnops.models.fit import STILL_FALLING
from attnops.models.generation.data import IGNORE_INDEX
from attnops.models.modeling import count_parameters
from attnops.models.precision import dtype_label
from attnops.models.recipe import Plan
from attnops.spec import PipelineSpec

NOT_LEARNING_DROP = 0.01
"""A run whose mean train loss never fell this far below its first value learnt nothing."""


def assess_fit(history: list[dict[str, float]], stopped_early: bool) -> dict[str, object]:
    """Underfit = the budget ran out while still learning: the last evaluation set a new best
    validation loss and the mean train loss fell by more than STILL_FALLING over the last
    interval. Early stopping ends a run because validation stopped improving: never underfit.
    Not learning = the mean train loss never fell `NOT_LEARNING_DROP` below its first value.
    """
    losses = [row["train_loss_mean"] for row in history]
    val = [row["val_loss"] for row in history]
    drop = (losses[-2] - losses[-1]) / losses[-2] if len(losses) >= 2 and losses[-2] else 0.0
    improved = len(val) >= 2 and val[-1] < min(val[:-1])
    still_learning = not stopped_early and improved and drop > STILL_FALLING
    # Over the whole run, not the last interval: a loss that never moved learnt nothing.
    not_learning = len(losses) >= 2 and min(losses) > (1 - NOT_LEARNING_DROP) * losses[0]
    if not history:
        note = "fit: no evaluation ran"
    elif not_learning:
        note = (
            f"fit: not learning (mean train loss {losses[0]:.3f} -> {losses[-1]:.3f}, never "
            f"{NOT_LEARNING_DROP:.0%} below where it started); check training.learning_rate "
            "and that targets follow from their inputs"
        )
    elif still_learning:
        note = (
            f"fit: underfit: the budget ran out while still learning (mean train loss fell "
            f"{100 * drop:.0f}% over the last interval, validation loss reached a new best "
            f"{val[-1]:.4f}); raise training.epochs / max_steps or the learning rate"
        )
    else:
        note = (
            f"fit: ok (mean train loss {losses[0]:.3f} -> {losses[-1]:.3f}, best validation "
            f"loss {min(val):.4f}, {'stopped early' if stopped_early else 'budget used'})"
        )
    return {
        "still_learning": still_learning,
        "not_learning": not_learning,
        "train_loss_drop_last_interval": drop,
        "val_loss_last": val[-1] if val else math.nan,
        "val_loss_best": min(val) if val else math.nan,
        "stopped_early": stopped_early,
        "note": note,
    }


def run_card(
    spec: PipelineSpec,
    model,
    train: list[dict],
    validation: list[dict],
    plan: Plan,
    device,
    resumed_at: int,
    cut: dict[str, int],
) -> dict:
    """The choices made before training starts, and why; `cut`: `data.cut_counts` of the
    train split."""
    cfg, gen = spec.training, spec.generation
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    target_tokens = sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in train)
    if gen.lora is not None:
        method = f"LoRA r={gen.lora.r} alpha={gen.lora.alpha:g}"
        why_method = (
            f"generation.lora set: adapters on {', '.join(gen.lora.target_modules)} "
            "(merged into the weights at the end)"
        )
    else:
        method = "full fine-tuning"
        why_method = "generation.lora is null: every weight is trained"
    reasons = {k: v for k, v in plan.reasons.items() if k != "head_learning_rate"}
    # The shared recipe words early stopping for classification; here it watches the loss.
    reasons["epochs"] = reasons["epochs"].replace("validation macro-F1", "validation loss")
    if cut["prompts_cut"]:
        reasons["prompts_cut"] = (
            f"{cut['prompts_cut']} of {cut['rows']} train prompts exceed "
            f"generation.max_prompt_tokens {gen.max_prompt_tokens}: their context (then source) "
            "loses its end, so the model never reads it; raise max_prompt_tokens if the answers "
            "depend on it"
        )
    if cut["targets_cut"]:
        reasons["targets_cut"] = (
            f"{cut['targets_cut']} of {cut['rows']} train targets exceed "
            f"generation.max_target_tokens {gen.max_target_tokens}: trained on their start, "
            "without an end of text"
        )
    return {
        "examples": len(train),
        "validation_examples": len(validation),
        "target_tokens": target_tokens,
        "prompts_cut": cut["prompts_cut"],
        "targets_cut": cut["targets_cut"],
        "tokens": sum(len(e["input_ids"]) for e in train),
        "method": method,
        "parameters": count_parameters(model),
        "trainable_parameters": trainable,
        "device": str(device),
        "dtype": dtype_label(device, cfg.bf16),
        "batch_size": cfg.batch_size,
        "grad_accum_steps": cfg.grad_accum_steps,
        "optimizer_steps": plan.total_steps,
        "epochs": plan.epochs,
        "learning_rate": cfg.learning_rate,
        "warmup_steps": plan.warmup_steps,
        "optimizer": "AdamW (fused)" if cfg.fused_optimizer else "AdamW",
        "gradient_checkpointing": gen.gradient_checkpointing,
        "compile": cfg.compile,
        "seed": cfg.seed,
        "resumed_at_step": resumed_at,
        "why": {"method": why_method, **reasons},
    }
