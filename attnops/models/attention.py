"""Attention health: per-head entropy, collapse, and head importance.

Entropy needs the attention weights, which SDPA kernels never materialise, so these
passes switch the model to eager attention and back. Head importance follows Michel et
al. (2019), "Are Sixteen Heads Really Better than One?": put a gate of 1.0 on every head
and take |dLoss/dGate|. transformers 5 dropped `head_mask`, so the gates are applied by a
hook that scales each head's slice of the input of the attention output projection.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from attnops.models.batching import Encoded, iterate, sequential_batches

# Attention output projections whose input is the concatenation of the heads' outputs,
# across the encoder families AutoModelForSequenceClassification covers.
_OUTPUT_PROJECTION = re.compile(
    r"(attention\.output\.dense|attention\.out_lin|self_attn\.out_proj|attn\.o_proj|attn\.c_proj)$"
)


@dataclass(frozen=True)
class AttentionReport:
    """Matrices are layers x heads."""

    entropy: np.ndarray
    """Mean attention entropy over log(attended tokens): 0 = one token, 1 = uniform."""
    importance: np.ndarray
    """Head importance, each layer's row scaled to unit L2 norm (Michel et al.)."""
    base_entropy: np.ndarray
    """The same entropy for the model before fine-tuning."""
    collapsed_heads: list[tuple[int, int]]
    """(layer, head) whose entropy fell below the threshold during fine-tuning."""

    @property
    def collapse(self) -> bool:
        return bool(self.collapsed_heads)


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """Temporarily compute attention eagerly so `output_attentions=True` returns weights."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@torch.no_grad()
def attention_entropy(
    model, data: Encoded, *, pad_id: int, device: torch.device, batch_size: int = 32
) -> np.ndarray:
    """Per-example normalised attention entropy, shape (examples, layers, heads).

    For each query token the entropy of its attention over the non-pad keys is divided
    by log(n_keys); queries are averaged over non-pad positions.
    """
    was_training = model.training
    model.eval()
    result = None
    with eager_attention(model):
        for indices, batch in iterate(
            data, sequential_batches(data.lengths, batch_size), pad_id, device
        ):
            batch.pop("labels", None)
            attentions = model(**batch, output_attentions=True).attentions
            mask = batch["attention_mask"].float()  # (B, T)
            n_keys = mask.sum(1).clamp(min=2)  # log(1) = 0: single-token inputs count as 2
            per_layer = []
            for att in attentions:  # (B, H, T, T)
                p = att.float().clamp_min(1e-12)
                h = -(p * p.log() * mask[:, None, None, :]).sum(-1)  # (B, H, T)
                h = (h * mask[:, None, :]).sum(-1) / mask.sum(1)[:, None]
                per_layer.append(h / n_keys.log()[:, None])
            values = torch.stack(per_layer, dim=1).cpu().numpy()  # (B, L, H)
            if result is None:
                result = np.zeros((len(data), *values.shape[1:]), dtype=np.float32)
            result[indices] = values
    model.train(was_training)
    return result


def head_importance(
    model, data: Encoded, *, pad_id: int, device: torch.device, batch_size: int = 32
) -> np.ndarray:
    """Mean over inputs of |dLoss(x)/dGate| per head, each layer's row L2-normalised.

    The absolute value must be taken per input, or gradients of opposite sign from
    different inputs would cancel (Michel et al., eq. 2). Each input of a batch gets its
    own copy of the gates and the losses are summed, so one backward pass yields every
    input's own gradient. `data` needs labels.
    """
    projections = [m for name, m in model.named_modules() if _OUTPUT_PROJECTION.search(name)]
    if not projections:
        raise ValueError(
            f"{type(model).__name__}: no attention output projection found for head importance"
        )
    n_heads = model.config.num_attention_heads
    gates: torch.Tensor | None = None  # (batch, layers, heads), set per batch

    def gate_hook(layer: int):
        def hook(_module, args):
            (x,) = args  # (batch, tokens, hidden)
            shape = x.shape
            heads = x.view(*shape[:-1], n_heads, shape[-1] // n_heads)
            gated = heads * gates[:, layer].view(shape[0], *[1] * (len(shape) - 2), n_heads, 1)
            return (gated.view(shape),)

        return hook

    handles = [p.register_forward_pre_hook(gate_hook(i)) for i, p in enumerate(projections)]
    was_training = model.training
    model.eval()  # no dropout: importance of the model as it will serve
    importance = torch.zeros(len(projections), n_heads, device=device)
    try:
        for indices, batch in iterate(
            data, sequential_batches(data.lengths, batch_size), pad_id, device
        ):
            gates = torch.ones(
                len(indices), len(projections), n_heads, device=device, requires_grad=True
            )
            labels = batch.pop("labels")
            logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, gates)
            importance += grad.abs().sum(0)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    scores = importance.detach().cpu().numpy()
    norms = np.linalg.norm(scores, axis=1, keepdims=True)
    return scores / np.where(norms > 0, norms, 1.0)


def attention_report(
    model,
    base_model,
    data: Encoded,
    *,
    pad_id: int,
    device: torch.device,
    collapse_entropy: float,
) -> AttentionReport:
    """Entropy, importance and collapsed heads on a fixed probe sample.

    Pretrained encoders have heads that are sharp by design (e.g. attend to the next
    token); a head counts as collapsed only if fine-tuning pushed it below
    `collapse_entropy` from above, which `base_model` (the model before fine-tuning) tells.
    """
    per_example = attention_entropy(model, data, pad_id=pad_id, device=device)
    entropy = per_example.mean(axis=0)
    base_entropy = attention_entropy(base_model, data, pad_id=pad_id, device=device).mean(axis=0)
    importance = head_importance(model, data, pad_id=pad_id, device=device)
    collapsed = (entropy < collapse_entropy) & (base_entropy >= collapse_entropy)
    return AttentionReport(
        entropy=entropy,
        importance=importance,
        base_entropy=base_entropy,
        collapsed_heads=[(int(layer), int(head)) for layer, head in np.argwhere(collapsed)],
    )
