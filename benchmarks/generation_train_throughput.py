"""Our generation trainer vs transformers.Trainer: same model, data, steps, batch and labels.

Both train the spec's base causal LM on the demo ticket replies (prompt = chat template over
instruction, article and ticket; loss on reply tokens only, `encode_examples` for both) for
the same optimizer steps, batch size, AdamW groups and warmup/decay schedule. Trainer pads
each random batch to its longest member (DataCollatorForSeq2Seq); ours groups similar
lengths and applies the output layer only where a target token is predicted. Prints real
(non-pad) training tokens per second, the padded share of each, and both models' validation
loss per target token (they should agree within 2%). torch, transformers, peft only:

    python benchmarks/generation_train_throughput.py                  # SmolLM2-135M
    python benchmarks/generation_train_throughput.py --steps 8 --batch-size 8 \\
        --config-overrides '{"num_hidden_layers": 4}'                 # a 4-layer cut, CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

from attnops.demo.ticket_replies import write_ticket_replies
from attnops.models.batching import length_grouped_batches, padded_width
from attnops.models.generation.base import load_base_model, model_cache_dir
from attnops.models.generation.data import encode_examples, load_generation_data
from attnops.models.generation.loss import validation_loss
from attnops.models.generation.train import train_generator
from attnops.models.modeling import seed_everything
from attnops.models.precision import native_bf16
from attnops.models.recipe import plan_training
from attnops.spec import PipelineSpec
from attnops.spec_generation import SMOLLM2_BASE

LOSS_TOLERANCE = 0.02
"""Largest relative difference of the two validation losses counted as the same result."""


class _CountingCollator(DataCollatorForSeq2Seq):
    """Trainer's padding collator that also counts real and padded tokens."""

    real_tokens = padded_tokens = 0

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["input_ids"].numel()
        return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=SMOLLM2_BASE, help="model.base (default: SmolLM2)")
    parser.add_argument("--config-overrides", default="{}", help="JSON, e.g. a layer cut")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: CPUs free)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--home", default=".attnops", help="model cache: HOME/base-models")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="attnops-gen-bench-"))
    paths = write_ticket_replies(folder, seed=0, n_train=args.n_train, n_labelled=2)
    spec = PipelineSpec.model_validate(
        {
            "name": "bench",
            "task": "generation",
            "model": {"base": args.base, "config_overrides": json.loads(args.config_overrides)},
            "data": {
                **{split: str(paths[split]) for split in ("train", "validation", "test")},
                "source_column": "ticket",
                "target_column": "reply",
                "context_column": "article",
            },
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "min_warmup_steps": 0,  # 6% of the steps, not a 10-step floor, in a short run
                "early_stopping_patience": None,
                "eval_every_steps": args.steps,  # one evaluation, at the end, outside the timing
                "device": args.device,
                "num_threads": args.threads,
                "compile": args.compile,
            },
        }
    )
    cfg, cache = spec.training, model_cache_dir(Path(args.home))
    data = load_generation_data(spec.data)

    ours = train_generator(spec, data, cache_dir=cache, progress=False)
    device, tokenizer = ours.device, ours.tokenizer
    train = encode_examples(tokenizer, spec.generation, data.splits["train"])
    validation = encode_examples(tokenizer, spec.generation, data.splits["validation"])
    ours_loss = _val_loss(ours.model, validation, tokenizer.pad_token_id, device, cfg)
    ours_padded = _our_padded_tokens(
        train, cfg.batch_size, cfg.seed, args.steps, cuda=device.type == "cuda"
    )

    seed_everything(cfg)  # the same initial weights as ours (a random init draws from it)
    model, _ = load_base_model(spec.model, cache)
    model.config.use_cache = False
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
        fused=cfg.fused_optimizer or None,
    )
    plan = plan_training(cfg, len(train))
    scheduler = get_linear_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)
    collator = _CountingCollator(tokenizer, label_pad_token_id=-100, padding=True)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(folder / "hf"),
            per_device_train_batch_size=cfg.batch_size,
            max_steps=args.steps,
            max_grad_norm=cfg.max_grad_norm,
            seed=cfg.seed,
            # The same precision as ours: bf16 autocast where the device does it natively.
            bf16=cfg.bf16 and native_bf16(device),
            use_cpu=device.type == "cpu",
            torch_compile=cfg.compile,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
        ),
        train_dataset=train,
        data_collator=collator,
        optimizers=(optimizer, scheduler),
    )
    started = time.perf_counter()
    trainer.train()
    hf_seconds = time.perf_counter() - started
    hf_tps = collator.real_tokens / hf_seconds
    model.eval()
    hf_loss = _val_loss(model, validation, tokenizer.pad_token_id, device, cfg)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    card = ours.result.run_card
    print(f"\ndevice: {name}, threads: {torch.get_num_threads()}, base: {args.base} "
          f"{args.config_overrides}, parameters: {card['parameters']:,}, train examples: "
          f"{len(train)}, steps: {args.steps}, batch: {cfg.batch_size}")  # fmt: skip
    print(f"{'':24}{'real tokens/s':>15}{'padded share':>14}{'val loss':>10}")
    ours_pad = 1 - ours.result.real_tokens / ours_padded
    hf_pad = 1 - collator.real_tokens / collator.padded_tokens
    ours_tps = ours.result.tokens_per_s
    print(f"{'attnops trainer':24}{ours_tps:>15.0f}{ours_pad:>14.1%}{ours_loss:>10.4f}")
    print(f"{'transformers.Trainer':24}{hf_tps:>15.0f}{hf_pad:>14.1%}{hf_loss:>10.4f}")
    difference = abs(ours_loss - hf_loss) / hf_loss
    verdict = "same result" if difference <= LOSS_TOLERANCE else "DIFFERENT results"
    print(f"throughput ratio: {ours_tps / hf_tps:.2f}x; validation loss "
          f"differs by {difference:.2%} ({verdict}, tolerance {LOSS_TOLERANCE:.0%})")  # fmt: skip


def _val_loss(model, validation, pad_id, device, cfg) -> float:
    model.to(device)
    return validation_loss(
        model.get_decoder(), model.get_output_embeddings(), validation, pad_id, device, cfg
    )


def _our_padded_tokens(
    train: list[dict], batch_size: int, seed: int, steps: int, *, cuda: bool
) -> int:
    """Token slots (real + pad) of the batches our trainer ran: the same batch plan it uses."""
    lengths = np.fromiter((len(e["input_ids"]) for e in train), dtype=np.int64)
    slots, epoch, done = 0, 0, 0
    while done < steps:
        for batch in length_grouped_batches(lengths, batch_size, seed=seed * 1_000 + epoch):
            slots += padded_width(int(lengths[batch].max()), cuda) * len(batch)
            done += 1
            if done == steps:
                break
        epoch += 1
    return slots


if __name__ == "__main__":
    main()
