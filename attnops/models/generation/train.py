"""Fine-tune a causal LM to write targets: set up (or resume), run the loop (`train_steps`), finish.

The classification loop's principles, for a decoder: length-grouped batches padded to their
longest member, the warmup/decay schedule of `models.recipe`, early stopping on validation
loss, resumable checkpoints (`models.checkpoints`), bf16 autocast where the device does bf16
natively (`models.precision`), fused AdamW. The
loss covers target tokens only, and the output layer (576 x 49,152 for SmolLM2, a fifth of
its forward FLOPs) runs only at the positions that predict one. LoRA adapters (peft) are
merged into the weights before return, so callers always get a plain causal LM. Runs with
torch, transformers and peft only: no MLflow, no Prefect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from attnops.models import loop, recipe
from attnops.models.checkpoints import load_best, prepare_checkpoint_dir, read_checkpoint, restore
from attnops.models.generation.base import load_base_model
from attnops.models.generation.data import GenerationData, cut_counts, encode_examples
from attnops.models.generation.run_card import assess_fit, run_card
from attnops.models.generation.train_steps import (
    GenerationState,
    Run,
    evaluate_and_checkpoint,
    train_step,
)
from attnops.models.modeling import pick_device, seed_everything
from attnops.models.precision import bf16_autocast
from attnops.spec import PipelineSpec
from attnops.spec_generation import GenerationSpec


@dataclass(frozen=True)
class GenerationTrainResult:
    best_val_loss: float
    """Mean cross-entropy per validation target token, best evaluation."""
    final_train_loss: float
    """Mean train loss over the steps after the last-but-one evaluation."""
    optimizer_steps: int
    real_tokens: int
    train_seconds: float
    stopped_early: bool
    history: list[dict[str, float]]
    run_card: dict[str, object]
    fit: dict[str, object]
    """`still_learning` (= underfit) with its figures and a note."""

    @property
    def underfit(self) -> bool:
        """The budget ran out while train and validation loss were still falling."""
        return bool(self.fit.get("still_learning"))

    @property
    def tokens_per_s(self) -> float:
        """Real (non-pad) training tokens per second of training time."""
        return self.real_tokens / max(self.train_seconds, 1e-9)


@dataclass(frozen=True)
class TrainedGenerator:
    model: object
    """A plain causal LM (LoRA adapters already merged), in eval mode, on `device`."""
    tokenizer: object
    device: torch.device
    result: GenerationTrainResult


def train_generator(
    spec: PipelineSpec,
    data: GenerationData,
    *,
    cache_dir: Path,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainedGenerator:
    """Fine-tune the spec's base model on the train split; keep the best validation weights.

    Args:
        spec: a `task: generation` spec (model, training, generation sections).
        data: its splits (`load_generation_data`).
        cache_dir: the base-model cache (`base.model_cache_dir`).
        checkpoint_dir: after each evaluation the state needed to resume is written here.
        resume: continue from the checkpoint there, which must come from the same data and
            settings; without it any old checkpoint is discarded.
        progress: show a progress bar.
    """
    cfg = spec.training
    if cfg.distributed.world_size > 1:
        raise ValueError(
            "training.distributed is not supported for task: generation yet; set "
            "training.distributed.nproc_per_node and nnodes to 1"
        )
    if checkpoint_dir is not None:
        _prepare_checkpoints(spec, data, checkpoint_dir, resume)
    seed_everything(cfg)
    device = pick_device(cfg.device)
    model, tokenizer = load_base_model(spec.model, cache_dir)
    train = encode_examples(tokenizer, spec.generation, data.splits["train"])
    validation = encode_examples(tokenizer, spec.generation, data.splits["validation"])
    model = _as_trained(model, spec.generation)
    model.to(device)
    run, card = _set_up(
        model,
        spec,
        train,
        validation,
        pad_id=tokenizer.pad_token_id,
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        cut=cut_counts(tokenizer, spec.generation, data.splits["train"]),
    )
    bar = tqdm(
        total=run.plan.total_steps, initial=run.state.step, disable=not progress, desc="fine-tune"
    )
    step = partial(train_step, run, train, cfg=cfg)
    evaluate = partial(evaluate_and_checkpoint, run, validation, cfg=cfg)
    model.train()
    while run.state.step < run.plan.total_steps and not run.stopped_early:
        loop.train_epoch(run, run.train_lengths, cfg, bar, step, evaluate)
    bar.close()
    model, result = _finish(run, spec.generation, card)
    return TrainedGenerator(model=model, tokenizer=tokenizer, device=device, result=result)


def _as_trained(model, gen: GenerationSpec):
    """The model as it trains: gradient checkpointing and LoRA adapters when asked, no cache."""
    if gen.gradient_checkpointing:
        # Non-reentrant checkpointing also works when only adapters need gradients.
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False  # no KV cache while training: one full pass per batch
    if gen.lora is not None:
        from peft import LoraConfig, get_peft_model  # only LoRA runs pay for the import

        lora = LoraConfig(
            r=gen.lora.r,
            lora_alpha=gen.lora.alpha,
            lora_dropout=gen.lora.dropout,
            target_modules=list(gen.lora.target_modules),
            layers_to_transform=_top_layers(model, gen.lora.top_layers),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def _set_up(
    model,
    spec: PipelineSpec,
    train: list[dict],
    validation: list[dict],
    *,
    pad_id: int,
    device: torch.device,
    checkpoint_dir: Path | None,
    resume: bool,
    cut: dict[str, int],
) -> tuple[Run, dict[str, object]]:
    """Optimizer, schedule and state (fresh or resumed), the run card (printed; `cut`: the
    train split's `cut_counts`)."""
    cfg, gen = spec.training, spec.generation
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    # No decay on norm weights and biases: decaying them only hurts (BERT recipe).
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
        fused=cfg.fused_optimizer or None,
    )
    plan = recipe.plan_training(cfg, len(train))
    scheduler = get_linear_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)
    state, best_weights = _resume(model, optimizer, scheduler, checkpoint_dir, resume)
    card = run_card(spec, model, train, validation, plan, device, state.step, cut)
    loop.print_run_card(card)
    core = model.get_base_model() if gen.lora is not None else model
    run = Run(
        model=model,
        decoder=torch.compile(core.get_decoder()) if cfg.compile else core.get_decoder(),
        head=core.get_output_embeddings(),
        autocast=bf16_autocast(device, cfg.bf16),
        trainable=[p for p in model.parameters() if p.requires_grad],
        optimizer=optimizer,
        scheduler=scheduler,
        plan=plan,
        pad_id=pad_id,
        device=device,
        checkpoint_dir=checkpoint_dir,
        train_lengths=np.fromiter(
            (len(e["input_ids"]) for e in train), dtype=np.int64, count=len(train)
        ),
        state=state,
        best_weights=best_weights,
        # A run that had already stopped early when it was checkpointed stays stopped.
        stopped_early=loop.patience_ran_out(cfg, state.evals_without_improvement),
    )
    return run, card


def _resume(
    model, optimizer, scheduler, checkpoint_dir: Path | None, resume: bool
) -> tuple[GenerationState, dict[str, torch.Tensor] | None]:
    """The state to start from and the best weights so far: the checkpoint's, or fresh ones."""
    if not (resume and checkpoint_dir and (checkpoint_dir / "last").is_dir()):
        return GenerationState(), None
    saved = read_checkpoint(checkpoint_dir, model)
    best_weights = load_best(checkpoint_dir, model)
    # `restore` sets optimizer, scheduler and random states; the state is ours.
    restore({**saved, "state": {}}, optimizer, scheduler)
    state = GenerationState(**saved["state"])
    print(f"resumed from {checkpoint_dir / 'last'} at step {state.step}")
    return state, best_weights


def _finish(run: Run, gen: GenerationSpec, card: dict) -> tuple[object, GenerationTrainResult]:
    """Load the best weights, fold LoRA adapters in, diagnose the fit (onto the run card)."""
    model, state = run.model, run.state
    if run.best_weights is not None:
        model.load_state_dict(run.best_weights)
    if gen.lora is not None:
        model = model.merge_and_unload()  # a plain LlamaForCausalLM, adapters folded in
    model.config.use_cache = True
    model.eval()
    fit = assess_fit(state.history, run.stopped_early)
    card["fit"] = fit
    print(fit["note"])
    result = GenerationTrainResult(
        best_val_loss=state.best_val_loss,
        final_train_loss=state.history[-1]["train_loss_mean"] if state.history else math.nan,
        optimizer_steps=state.step,
        real_tokens=state.real_tokens,
        train_seconds=state.train_seconds,
        stopped_early=run.stopped_early,
        history=state.history,
        run_card=card,
        fit=fit,
    )
    return model, result


def _prepare_checkpoints(
    spec: PipelineSpec, data: GenerationData, checkpoint_dir: Path, resume: bool
) -> None:
    shaping = {
        "instruction",
        "max_prompt_tokens",
        "max_target_tokens",
        "lora",
        "gradient_checkpointing",
    }
    prepare_checkpoint_dir(
        checkpoint_dir,
        data.data_sha256,
        [
            spec.model.model_dump(),
            spec.training.model_dump(exclude={"distributed"}),
            spec.generation.model_dump(include=shaping),
        ],
        resume=resume,
        what="model/training/generation",
    )


def _top_layers(model, top: int | None) -> list[int] | None:
    """Indices of the top `top` decoder layers (all when None or more than there are)."""
    n = model.config.num_hidden_layers
    return None if top is None or top >= n else list(range(n - top, n))
