"""Fine-tune a causal LM to write targets: setup, loop, validation loss, stop early, resume.

The classification loop's principles, for a decoder: length-grouped batches padded to their
longest member, the warmup/decay schedule of `models.recipe`, early stopping on validation
loss, resumable checkpoints (`models.checkpoints`), bf16 autocast on CUDA, fused AdamW. The
loss covers target tokens only, and the output layer (576 x 49,152 for SmolLM2, a fifth of
its forward FLOPs) runs only at the positions that predict one. LoRA adapters (peft) are
merged into the weights before return, so callers always get a plain causal LM. Runs with
torch, transformers and peft only: no MLflow, no Prefect.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from attnops.models import recipe
from attnops.models.batching import length_grouped_batches
from attnops.models.checkpoints import (
    cpu_copy,
    load_best,
    prepare_checkpoint_dir,
    read_checkpoint,
    restore,
    save_best,
    save_checkpoint,
)
from attnops.models.generation.base import load_base_model
from attnops.models.generation.data import GenerationData, encode_examples
from attnops.models.generation.loss import collate, target_loss, validation_loss
from attnops.models.generation.run_card import assess_fit, run_card
from attnops.models.modeling import pick_device, seed_everything
from attnops.spec import PipelineSpec


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
    cfg, gen = spec.training, spec.generation
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
    train = encode_examples(tokenizer, gen, data.splits["train"])
    validation = encode_examples(tokenizer, gen, data.splits["validation"])
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
    model.to(device)
    cuda = device.type == "cuda"
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
    state, best_weights = GenerationState(), None
    if resume and checkpoint_dir and (checkpoint_dir / "last").is_dir():
        saved = read_checkpoint(checkpoint_dir, model)
        best_weights = load_best(checkpoint_dir, model)
        # `restore` sets optimizer, scheduler and random states; the state is ours.
        restore({**saved, "state": {}}, optimizer, scheduler)
        state = GenerationState(**saved["state"])
        print(f"resumed from {checkpoint_dir / 'last'} at step {state.step}")

    card = run_card(spec, model, train, validation, plan, device, state.step)
    facts = ", ".join(f"{k}={v}" for k, v in card.items() if k != "why")
    print(f"run card: {facts}\n" + "\n".join(f"  {k}: {v}" for k, v in card["why"].items()))

    core = model.get_base_model() if gen.lora is not None else model
    decoder = torch.compile(core.get_decoder()) if cfg.compile else core.get_decoder()
    head = core.get_output_embeddings()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.bf16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    lengths = np.fromiter((len(e["input_ids"]) for e in train), dtype=np.int64, count=len(train))
    patience = cfg.early_stopping_patience
    stopped_early = bool(patience and state.evals_without_improvement >= patience)
    interval_loss, interval_steps = 0.0, 0
    bar = tqdm(total=plan.total_steps, initial=state.step, disable=not progress, desc="fine-tune")
    model.train()
    while state.step < plan.total_steps and not stopped_early:
        batches = length_grouped_batches(
            lengths, cfg.batch_size, seed=cfg.seed * 1_000 + state.epoch
        )
        started = time.perf_counter()
        for b in range(state.batches_done_in_epoch, len(batches)):
            batch = collate(train, batches[b], tokenizer.pad_token_id, device)
            # Scale so an accumulated step averages its micro-batches; an epoch's last group
            # can be shorter than grad_accum_steps.
            group_start = b - b % cfg.grad_accum_steps
            group_size = min(cfg.grad_accum_steps, len(batches) - group_start)
            with autocast:
                loss = target_loss(decoder, head, batch)
            (loss / group_size).backward()
            state.real_tokens += int(lengths[batches[b]].sum())  # host-side: no device sync
            if (b + 1) % cfg.grad_accum_steps and b + 1 < len(batches):
                continue
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batches_done_in_epoch = b + 1
            loss_value = loss.item()
            interval_loss, interval_steps = interval_loss + loss_value, interval_steps + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            last_of_epoch = b + 1 == len(batches)
            if (
                state.step % plan.eval_every_steps
                and state.step < plan.total_steps
                and not last_of_epoch
            ):
                continue
            if last_of_epoch:
                state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
            state.train_seconds += time.perf_counter() - started
            val_loss = validation_loss(
                decoder, head, validation, tokenizer.pad_token_id, device, cfg
            )
            model.train()
            state.history.append(
                {
                    "step": state.step,
                    "val_loss": val_loss,
                    "train_loss_mean": interval_loss / interval_steps,
                    "train_loss": loss_value,
                    "learning_rate": scheduler.get_last_lr()[0],
                }
            )
            if val_loss < state.best_val_loss:
                state.best_val_loss, state.evals_without_improvement = val_loss, 0
                best_weights = cpu_copy(model)
                if checkpoint_dir:
                    save_best(checkpoint_dir, model)
            elif state.step > plan.warmup_steps:  # no verdict while still warming up
                state.evals_without_improvement += 1
            if checkpoint_dir:
                save_checkpoint(checkpoint_dir, model, optimizer, scheduler, state)
            stopped_early = bool(patience and state.evals_without_improvement >= patience)
            interval_loss, interval_steps = 0.0, 0
            started = time.perf_counter()
            if stopped_early or state.step >= plan.total_steps:
                break
    bar.close()
    if best_weights is not None:
        model.load_state_dict(best_weights)
    if gen.lora is not None:
        model = model.merge_and_unload()  # a plain LlamaForCausalLM, adapters folded in
    model.config.use_cache = True
    model.eval()
    fit = assess_fit(state.history, stopped_early)
    card["fit"] = fit
    print(fit["note"])
    result = GenerationTrainResult(
        best_val_loss=state.best_val_loss,
        final_train_loss=state.history[-1]["train_loss_mean"] if state.history else math.nan,
        optimizer_steps=state.step,
        real_tokens=state.real_tokens,
        train_seconds=state.train_seconds,
        stopped_early=stopped_early,
        history=state.history,
        run_card=card,
        fit=fit,
    )
    return TrainedGenerator(model=model, tokenizer=tokenizer, device=device, result=result)


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
