"""Fine-tune a sequence classifier: set up (or resume), run the loop (`train_steps`), finish.

Runs on CPU or CUDA with torch and transformers only (no MLflow, no Prefect), so the same
code trains on a laptop and on a GPU box, in one process or in several under torchrun
(DDP). Batches are a pure function of (seed, epoch), so every rank builds the same global
batches and takes its share of each (see `distributed.shard`); rank 0 alone logs,
evaluates and checkpoints, and tells the other ranks whether to stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from attnops.models import distributed, loop, recipe
from attnops.models.batching import Encoded
from attnops.models.checkpoints import TrainState, load_best, read_checkpoint, restore
from attnops.models.fit import assess_fit, describe_fit
from attnops.models.modeling import count_parameters
from attnops.models.precision import bf16_autocast, dtype_label
from attnops.models.train_steps import (
    EvaluationCallback,
    Run,
    StepCallback,
    evaluate_and_checkpoint,
    train_step,
)
from attnops.spec import TrainingSpec


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
            validation macro-F1, whether it is the plan's last); may raise to stop (a search
            prunes a trial this way).
        card_notes: more choices made by the caller and why, for the run card.
    """
    world = distributed.world()
    model.to(device)
    run, card = _set_up(
        model,
        len(train),
        cfg,
        world,
        pad_id=pad_id,
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        card_notes=card_notes,
    )
    bar = tqdm(
        total=run.plan.total_steps,
        initial=run.state.step,
        disable=not (progress and world.is_main),
        desc="fine-tune",
    )
    step = partial(train_step, run, train, cfg=cfg)
    evaluate = partial(evaluate_and_checkpoint, run, validation, cfg=cfg, on_evaluate=on_evaluate)
    on_step = on_step if world.is_main else None  # rank 0 reports (the metrics are global)
    model.train()
    while run.state.step < run.plan.total_steps and not run.stopped_early:
        loop.train_epoch(run, train.lengths, cfg, bar, step, evaluate, on_step)
    bar.close()
    return _finish(run, train, cfg, card)


def _set_up(
    model,
    n_train: int,
    cfg: TrainingSpec,
    world: distributed.World,
    *,
    pad_id: int,
    device: torch.device,
    checkpoint_dir: Path | None,
    resume: bool,
    card_notes: dict[str, str] | None,
) -> tuple[Run, dict[str, object]]:
    """Optimizer, schedule and state (fresh or resumed), the run card (printed), DDP."""
    # The fused AdamW kernel updates all parameters in one pass, on CPU too: 7x less CPU
    # time per step than the default per-tensor loop for MiniLM, where that loop and the
    # clipping took a fifth of each step on short texts (README "Benchmarks").
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg), lr=cfg.learning_rate, fused=cfg.fused_optimizer or None
    )
    plan = recipe.plan_training(cfg, n_train)
    scheduler = get_linear_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)
    state, best_weights = _resume(model, optimizer, scheduler, world, checkpoint_dir, resume)
    card = _run_card(model, n_train, cfg, plan, device, world, state.step, card_notes)
    if world.is_main:
        loop.print_run_card(card)
    # DDP broadcasts rank 0's weights when it wraps the model, then all-reduces (averages)
    # gradients in backward. Evaluation and checkpoints use the unwrapped `model`.
    cuda = device.type == "cuda"
    ddp = None
    if world.size > 1:
        ddp = DistributedDataParallel(model, device_ids=[device] if cuda else None)
    forward = model if ddp is None else ddp
    run = Run(
        model=model,
        ddp=ddp,
        forward=torch.compile(forward) if cfg.compile else forward,
        # On a CPU with native bf16 too: 2.6x per MiniLM step at the same accuracy (spec.py).
        autocast=bf16_autocast(device, cfg.bf16),
        trainable=[p for p in model.parameters() if p.requires_grad],
        optimizer=optimizer,
        scheduler=scheduler,
        plan=plan,
        world=world,
        pad_id=pad_id,
        device=device,
        checkpoint_dir=checkpoint_dir,
        state=state,
        best_weights=best_weights,
        # A run that had already stopped early when it was checkpointed stays stopped.
        stopped_early=loop.patience_ran_out(cfg, state.evals_without_improvement),
    )
    return run, card


def _resume(
    model,
    optimizer,
    scheduler,
    world: distributed.World,
    checkpoint_dir: Path | None,
    resume: bool,
) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """The state to start from and the best weights so far: the checkpoint's, or fresh ones."""
    saved, best_weights = None, None
    if world.is_main and resume and checkpoint_dir and (checkpoint_dir / "last").is_dir():
        saved = read_checkpoint(checkpoint_dir, model)
        best_weights = load_best(checkpoint_dir, model)
        print(f"resumed from {checkpoint_dir / 'last'} at step {saved['state']['step']}")
    elif world.is_main and resume:
        print(f"no checkpoint in {checkpoint_dir}: starting from scratch")
    # Rank 0 alone reads the checkpoint (no shared disk needed): the other ranks get its
    # weights from DDP's construction and the rest of the training state from here.
    saved = distributed.broadcast_from_main(saved, world)
    state = TrainState() if saved is None else restore(saved, optimizer, scheduler)
    return state, best_weights


def _run_card(
    model,
    n_train: int,
    cfg: TrainingSpec,
    plan: recipe.Plan,
    device: torch.device,
    world: distributed.World,
    resumed_at_step: int,
    card_notes: dict[str, str] | None,
) -> dict[str, object]:
    """The choices made before training starts, and why."""
    frozen = not model.get_input_embeddings().weight.requires_grad
    return {
        "examples": n_train,
        "classes": model.config.num_labels,
        "parameters": count_parameters(model),
        "device": str(device),
        "dtype": dtype_label(device, cfg.bf16),
        "processes": world.size,
        "batch_size": cfg.batch_size,
        "per_process_batch": math.ceil(cfg.batch_size / world.size),
        "grad_accum_steps": cfg.grad_accum_steps,
        "effective_batch": cfg.batch_size * cfg.grad_accum_steps,
        "optimizer_steps": plan.total_steps,
        "epochs": plan.epochs,
        "learning_rate": cfg.learning_rate,
        "head_learning_rate": plan.head_learning_rate,
        "warmup_steps": plan.warmup_steps,
        "max_grad_norm": cfg.max_grad_norm,
        "word_embeddings": "frozen" if frozen else "trained",
        "optimizer": "AdamW (fused)" if cfg.fused_optimizer else "AdamW",
        "seed": cfg.seed,
        "compile": cfg.compile,
        "resumed_at_step": resumed_at_step,
        "why": {**plan.reasons, **(card_notes or {})},
    }


def _finish(run: Run, train: Encoded, cfg: TrainingSpec, card: dict) -> TrainResult:
    """Load the best weights, diagnose the fit (rank 0, onto the run card), report."""
    model, state, plan = run.model, run.state, run.plan
    if run.best_weights is not None:
        model.load_state_dict(run.best_weights)
    model.eval()
    fit = {}
    if run.world.is_main:
        cut = plan.total_steps < plan.epochs * plan.steps_per_epoch
        stopped_by = "early_stopping" if run.stopped_early else "max_steps" if cut else "epochs"
        fit = assess_fit(
            model,
            train,
            state.history,
            cfg,
            stopped_by=stopped_by,
            pad_id=run.pad_id,
            device=run.device,
        )
        card["fit"] = fit
        print(describe_fit(fit))
    return TrainResult(
        best_val_macro_f1=state.best_macro_f1,
        optimizer_steps=state.step,
        real_tokens=state.real_tokens,
        train_seconds=state.train_seconds,
        stopped_early=run.stopped_early,
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
