"""Fine-tune a sequence classifier: setup, loop, evaluate, stop early, checkpoint, resume.

Runs on CPU or CUDA with torch and transformers only (no MLflow, no Prefect), so the same
code trains on a laptop and on a GPU box, in one process or in several under torchrun
(DDP). Batches are a pure function of (seed, epoch), so every rank builds the same global
batches and takes its share of each (see `distributed.shard`); rank 0 alone logs,
evaluates and checkpoints, and tells the other ranks whether to stop.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from attnops.models import distributed, recipe
from attnops.models.batching import Encoded, iterate, length_grouped_batches
from attnops.models.checkpoints import (
    TrainState,
    cpu_copy,
    load_best,
    read_checkpoint,
    restore,
    save_best,
    save_checkpoint,
)
from attnops.models.fit import assess_fit, describe_fit
from attnops.models.inference import predict
from attnops.models.modeling import count_parameters
from attnops.spec import TrainingSpec

StepCallback = Callable[[int, dict[str, float]], None]
EvaluationCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainResult:
    best_val_macro_f1: float
    optimizer_steps: int
    real_tokens: int
    train_seconds: float
    stopped_early: bool
    history: list[dict[str, float]]
    run_card: dict[str, object]
    """The choices made and why (`why`), and after training the `fit` diagnosis."""
    fit: dict[str, object]
    """`models.fit.diagnose_fit`: `underfit` or `ok` with its figures (empty off rank 0)."""

    @property
    def underfit(self) -> bool:
        return self.fit.get("diagnosis") == "underfit"

    @property
    def tokens_per_s(self) -> float:
        """Real (non-pad) training tokens per second of training time."""
        return self.real_tokens / max(self.train_seconds, 1e-9)


@dataclass(frozen=True)
class TrainedClassifier:
    """What `classifier.train_classifier` returns, in one process or back from torchrun."""

    model: object
    tokenizer: object
    result: TrainResult
    device: torch.device
    temperature: float
    """Calibration temperature folded into the output layer (1.0: not calibrated)."""


def fine_tune(
    model,
    train: Encoded,
    validation: Encoded,
    cfg: TrainingSpec,
    *,
    pad_id: int,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_step: StepCallback | None = None,
    progress: bool = True,
    on_evaluate: EvaluationCallback | None = None,
    card_notes: dict[str, str] | None = None,
) -> TrainResult:
    """Train `model` in place and leave it holding the best validation weights.

    Inside a torch.distributed process group (torchrun) every rank calls this with the same
    arguments; each trains on its share of every batch, DDP averages the gradients, and
    only rank 0 prints, evaluates, calls `on_step`, writes checkpoints and ends up with
    the best weights (the other ranks keep the last ones). A checkpoint does not depend on
    the number of ranks, so a run may resume with more or fewer processes.

    Args:
        model: a `*ForSequenceClassification` model; moved to `device`.
        train, validation: encoded splits with labels.
        cfg: the spec's `training` section.
        pad_id: the tokenizer's padding id.
        device: where to train.
        checkpoint_dir: after each evaluation the state needed to resume is written here
            (by rank 0; other ranks need no access to it).
        resume: continue from the checkpoint in `checkpoint_dir` if there is one.
        on_step: called after every optimizer step with (step, metrics); may raise to stop.
            Metrics are over all ranks.
        progress: show a progress bar.
        on_evaluate: called by rank 0 after every validation evaluation with (step,
            validation macro-F1); may raise to stop (a search prunes a trial this way).
        card_notes: more choices made by the caller and why, for the run card.
    """
    world = distributed.world()
    cuda = device.type == "cuda"
    model.to(device)
    # The fused AdamW kernel updates all parameters in one pass, on CPU too: 7x less CPU
    # time per step than the default per-tensor loop for MiniLM, where that loop and the
    # clipping took a fifth of each step on short texts (README "Benchmarks").
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg), lr=cfg.learning_rate, fused=cfg.fused_optimizer or None
    )
    plan = recipe.plan_training(cfg, len(train))
    total_steps, eval_every = plan.total_steps, plan.eval_every_steps
    scheduler = get_linear_schedule_with_warmup(optimizer, plan.warmup_steps, total_steps)
    patience = cfg.early_stopping_patience
    state, best_weights, saved = TrainState(), None, None
    if world.is_main and resume and checkpoint_dir and (checkpoint_dir / "last").is_dir():
        saved = read_checkpoint(checkpoint_dir, model)
        best_weights = load_best(checkpoint_dir, model)
        print(f"resumed from {checkpoint_dir / 'last'} at step {saved['state']['step']}")
    elif world.is_main and resume:
        print(f"no checkpoint in {checkpoint_dir}: starting from scratch")
    # Rank 0 alone reads the checkpoint (no shared disk needed): the other ranks get its
    # weights from DDP's construction and the rest of the training state from here.
    saved = distributed.broadcast_from_main(saved, world)
    if saved is not None:
        state = restore(saved, optimizer, scheduler)

    frozen = not model.get_input_embeddings().weight.requires_grad
    card = {
        "examples": len(train),
        "classes": model.config.num_labels,
        "parameters": count_parameters(model),
        "device": str(device),
        "dtype": "bf16 autocast" if cuda and cfg.bf16 else "fp32",
        "processes": world.size,
        "batch_size": cfg.batch_size,
        "per_process_batch": math.ceil(cfg.batch_size / world.size),
        "grad_accum_steps": cfg.grad_accum_steps,
        "effective_batch": cfg.batch_size * cfg.grad_accum_steps,
        "optimizer_steps": total_steps,
        "epochs": plan.epochs,
        "learning_rate": cfg.learning_rate,
        "head_learning_rate": plan.head_learning_rate,
        "warmup_steps": plan.warmup_steps,
        "max_grad_norm": cfg.max_grad_norm,
        "word_embeddings": "frozen" if frozen else "trained",
        "optimizer": "AdamW (fused)" if cfg.fused_optimizer else "AdamW",
        "seed": cfg.seed,
        "compile": cfg.compile,
        "resumed_at_step": state.step,
        "why": {**plan.reasons, **(card_notes or {})},
    }
    if world.is_main:
        facts = ", ".join(f"{k}={v}" for k, v in card.items() if k != "why")
        print(f"run card: {facts}\n" + "\n".join(f"  {k}: {v}" for k, v in card["why"].items()))

    # DDP broadcasts rank 0's weights when it wraps the model, then all-reduces (averages)
    # gradients in backward. Evaluation and checkpoints use the unwrapped `model`.
    ddp = None
    if world.size > 1:
        ddp = DistributedDataParallel(model, device_ids=[device] if cuda else None)
    forward = model if ddp is None else ddp
    forward = torch.compile(forward) if cfg.compile else forward
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.bf16)
    labels = np.asarray(validation.labels)
    trainable = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        disable=not (progress and world.is_main),
        desc="fine-tune",
    )
    # A run that had already stopped early when it was checkpointed stays stopped.
    stopped_early = bool(patience and state.evals_without_improvement >= patience)
    # Mean train loss since the last evaluation: the diagnosis compares the last two.
    interval_loss, interval_steps = 0.0, 0
    model.train()
    while state.step < total_steps and not stopped_early:
        batches = length_grouped_batches(
            train.lengths, cfg.batch_size, seed=cfg.seed * 1_000 + state.epoch
        )
        started = time.perf_counter()
        for b in range(state.batches_done_in_epoch, len(batches)):
            mine, weight = distributed.shard(batches[b], world)
            _, batch = next(iterate(train, [mine], pad_id, device))
            # Scale so an accumulated step averages over its micro-batches; the last group
            # of an epoch can be shorter than grad_accum_steps. `weight` (1 in one process)
            # makes DDP's average over ranks the mean over the whole global micro-batch.
            group_start = b - b % cfg.grad_accum_steps
            group_size = min(cfg.grad_accum_steps, len(batches) - group_start)
            steps_now = not (b + 1) % cfg.grad_accum_steps or b + 1 == len(batches)
            # Accumulating micro-batches skip DDP's all-reduce; the last one of a group
            # reduces the summed gradients once.
            no_sync = (
                ddp.no_sync() if ddp is not None and not steps_now else contextlib.nullcontext()
            )
            with no_sync:
                with autocast:
                    loss = forward(**batch).loss * weight / group_size
                loss.backward()
            state.real_tokens += int(train.lengths[batches[b]].sum())  # host-side: no GPU sync
            if not steps_now:
                continue
            grad_norm = None
            if cfg.max_grad_norm:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batches_done_in_epoch = b + 1
            # One device sync per optimizer step for both numbers. The loss is the global
            # micro-batch's mean (grad_norm is already global: DDP reduced the gradients).
            last_loss = distributed.mean_over_ranks(loss.detach() * group_size, world)
            if grad_norm is None:
                metrics = {"train_loss": last_loss.item()}
            else:
                loss_value, norm_value = torch.stack([last_loss, grad_norm]).tolist()
                metrics = {"train_loss": loss_value, "grad_norm": norm_value}
            metrics["learning_rate"] = scheduler.get_last_lr()[0]
            interval_loss += metrics["train_loss"]
            interval_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['train_loss']:.3f}")
            if on_step and world.is_main:
                on_step(state.step, metrics)
            last_of_epoch = b + 1 == len(batches)
            if state.step % eval_every == 0 or state.step == total_steps or last_of_epoch:
                if last_of_epoch:
                    state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
                state.train_seconds += time.perf_counter() - started
                if world.is_main:
                    score = _val_macro_f1(model, validation, labels, pad_id, device)
                    mean_loss = interval_loss / interval_steps
                    state.history.append(
                        {"step": state.step, "val_macro_f1": score, "train_loss_mean": mean_loss}
                        | metrics
                    )
                    if score > state.best_macro_f1:
                        state.best_macro_f1, state.evals_without_improvement = score, 0
                        best_weights = cpu_copy(model)
                        if checkpoint_dir:
                            save_best(checkpoint_dir, model)
                    elif state.step > plan.warmup_steps:  # no verdict while still warming up
                        state.evals_without_improvement += 1
                    if checkpoint_dir:
                        save_checkpoint(checkpoint_dir, model, optimizer, scheduler, state)
                    stopped_early = bool(patience and state.evals_without_improvement >= patience)
                    if on_evaluate:
                        on_evaluate(state.step, score)
                # The other ranks wait here while rank 0 evaluates and writes (bounded by
                # distributed.timeout_s), then all stop or go on together.
                stopped_early = distributed.broadcast_from_main(stopped_early, world)
                interval_loss, interval_steps = 0.0, 0
                started = time.perf_counter()
            if stopped_early or state.step >= total_steps:
                break
    bar.close()
    if best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()
    fit = {}
    if world.is_main:
        cut = total_steps < plan.epochs * plan.steps_per_epoch
        stopped_by = "early_stopping" if stopped_early else "max_steps" if cut else "epochs"
        fit = assess_fit(
            model, train, state.history, cfg, stopped_by=stopped_by, pad_id=pad_id, device=device
        )
        card["fit"] = fit
        print(describe_fit(fit))
    return TrainResult(
        best_val_macro_f1=state.best_macro_f1,
        optimizer_steps=state.step,
        real_tokens=state.real_tokens,
        train_seconds=state.train_seconds,
        stopped_early=stopped_early,
        history=state.history,
        run_card=card,
        fit=fit,
    )


def param_groups(model, cfg: TrainingSpec) -> list[dict]:
    """Encoder vs head (classifier + pooler) x decay vs no decay.

    No decay on biases and LayerNorm weights: decaying them only hurts (BERT recipe). The
    head starts from random weights, so it may take a larger step than the encoder.
    """
    encoder = f"{model.base_model_prefix}."
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            is_head = not name.startswith(encoder) or ".pooler." in name
            groups.setdefault((is_head, param.ndim >= 2), []).append(param)
    head_lr = recipe.head_learning_rate(cfg)
    return [
        {
            "params": params,
            "lr": head_lr if is_head else cfg.learning_rate,
            "weight_decay": cfg.weight_decay if decays else 0.0,
        }
        for (is_head, decays), params in sorted(groups.items())
    ]


def _val_macro_f1(model, validation: Encoded, labels, pad_id: int, device) -> float:
    predicted = predict(model, validation, pad_id=pad_id, device=device).labels
    return macro_f1(np.asarray(labels), np.asarray(predicted))


def macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the classes in `labels` or `predicted` (a class never right scores 0).

    sklearn's `f1_score(average="macro", zero_division=0)`, in numpy: the training loop
    picks its checkpoint with it on machines that have torch but not sklearn (GPU boxes).
    """
    classes = np.union1d(labels, predicted)
    hits = np.array([np.sum((labels == c) & (predicted == c)) for c in classes])
    wrong = np.array([np.sum(labels == c) + np.sum(predicted == c) for c in classes])
    return float(np.mean(2 * hits / wrong))
