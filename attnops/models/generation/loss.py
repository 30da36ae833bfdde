"""Batches of (prompt, target) examples and the loss on their target tokens.

Only target positions carry a loss, so the output layer (576 x 49,152 for SmolLM2, about a
fifth of its forward FLOPs and the largest activation, batch x length x vocabulary floats)
runs only at the positions that predict a target token. On support replies with an article
in the prompt that is a quarter to a third of the positions.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attnops.models.batching import padded_width
from attnops.models.generation.data import IGNORE_INDEX
from attnops.models.precision import bf16_autocast


def collate(examples: list[dict], indices, pad_id: int, device: torch.device) -> dict:
    """Pad the selected examples to the longest of them (labels with IGNORE_INDEX; on CUDA
    to `padded_width` of it)."""
    rows = [examples[i] for i in indices]
    cuda = device.type == "cuda"
    width = padded_width(max(len(row["input_ids"]) for row in rows), cuda)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[r, :n] = torch.tensor(row["input_ids"])
        labels[r, :n] = torch.tensor(row["labels"])
        attention_mask[r, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {
        k: (v.pin_memory() if cuda else v).to(device, non_blocking=cuda) for k, v in batch.items()
    }


def target_loss(decoder, head, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the target tokens, the output layer applied only where it counts.

    Position t predicts token t + 1; prompt and padding positions carry IGNORE_INDEX. The
    same value as the model's own `loss` (up to rounding) at a fraction of the output work.
    """
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    labels = batch["labels"][:, 1:]
    predicts = labels != IGNORE_INDEX
    logits = head(hidden.last_hidden_state[:, :-1][predicts])
    return F.cross_entropy(logits.float(), labels[predicts], reduction=reduction)


@torch.no_grad()
def validation_loss(decoder, head, examples: list[dict], pad_id: int, device, cfg) -> float:
    """Mean cross-entropy per target token over all of `examples` (eval mode)."""
    decoder.eval()
    lengths = np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    autocast = bf16_autocast(device, cfg.bf16)
    total = torch.zeros((), device=device)
    tokens = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(order), cfg.batch_size):
        batch = collate(examples, order[start : start + cfg.batch_size], pad_id, device)
        with autocast:
            total += target_loss(decoder, head, batch, reduction="sum")
        tokens += (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    return (total / tokens.clamp(min=1)).item()
