"""Lookback ratio per layer and head (Lookback Lens, Chuang et al., EMNLP 2024).

While a model writes token y_t, each attention head splits its weight between the input
(prompt) tokens and the tokens it has generated so far. With A_ctx the head's mean weight
on an input token and A_new its mean weight on a generated token,

    lookback = A_ctx / (A_ctx + A_new)

is near 1 for a head that keeps reading the input and near 0 for one that only reads its
own output; the paper finds a linear classifier over these ratios (layers x heads,
averaged over the output) detects contextual hallucinations.

Convention: the step that writes the first output token has no generated tokens to look
back at, so its ratio is undefined and skipped (not counted as 1): counting it as 1 would
pull short outputs towards 1 whatever the heads do. An output with no scored step (one
token or none) gets ratio 1 everywhere, the limit of a head that has only the input to
read. The query token itself counts as generated once it is an output token, as in the
paper (it is among the keys at that step).
"""

from __future__ import annotations

import numpy as np
import torch


def lookback_ratios(
    attention: torch.Tensor, context_mask: torch.Tensor, generated_mask: torch.Tensor
) -> torch.Tensor:
    """Lookback ratio of every head at every query position of one layer.

    Args:
        attention: Attention weights (batch, heads, queries, keys).
        context_mask: (batch, keys) bool, True on input (prompt) tokens that are not padding.
        generated_mask: (batch, queries, keys) bool, True on the generated tokens each query
            may attend to.

    Returns:
        (batch, heads, queries) float32 ratios; NaN where a query sees no generated token
        or no input token (undefined, to be skipped by the caller).
    """
    weights = attention.float()
    ctx = context_mask[:, None, None, :].float()
    new = generated_mask[:, None, :, :].float()
    n_ctx, n_new = ctx.sum(-1), new.sum(-1)  # (batch, 1, 1) and (batch, 1, queries)
    a_ctx = (weights * ctx).sum(-1) / n_ctx.clamp(min=1)
    a_new = (weights * new).sum(-1) / n_new.clamp(min=1)
    ratio = a_ctx / (a_ctx + a_new).clamp(min=1e-12)
    defined = (n_ctx > 0) & (n_new > 0)
    return torch.where(defined, ratio, torch.full_like(ratio, float("nan")))


class LookbackAccumulator:
    """Running mean of lookback ratios over decoding steps, per sequence of a batch.

    Decoding feeds one step at a time (one query per sequence), so only the running sum
    (batch, layers, heads) is kept, never the attention maps.
    """

    def __init__(self, batch_size: int, n_layers: int, n_heads: int):
        self._sum = np.zeros((batch_size, n_layers, n_heads), dtype=np.float64)
        self._steps = np.zeros(batch_size, dtype=np.int64)

    def add(self, per_layer: list[torch.Tensor], active: np.ndarray) -> None:
        """Adds one step.

        Args:
            per_layer: One (batch, heads) ratio tensor per layer (NaN where undefined).
            active: (batch,) bool, sequences whose step counts (not finished, not the first).
        """
        ratios = torch.stack(per_layer, dim=1).cpu().numpy()  # (batch, layers, heads)
        counted = active & ~np.isnan(ratios).any(axis=(1, 2))
        self._sum[counted] += ratios[counted]
        self._steps[counted] += 1

    def mean(self, row: int) -> np.ndarray:
        """(layers, heads) mean ratio of sequence `row`; ones when no step was counted."""
        if self._steps[row] == 0:
            return np.ones(self._sum.shape[1:], dtype=np.float32)
        return (self._sum[row] / self._steps[row]).astype(np.float32)


def mean_lookback(ratios: torch.Tensor) -> np.ndarray:
    """Average over query positions of per-layer ratios, skipping undefined (NaN) steps.

    Args:
        ratios: (layers, heads, queries) ratios of one sequence.

    Returns:
        (layers, heads) float32 mean; ones when no query position is defined.
    """
    values = ratios.float().cpu().numpy()
    defined = ~np.isnan(values).any(axis=(0, 1))
    if not defined.any():
        return np.ones(values.shape[:2], dtype=np.float32)
    return values[:, :, defined].mean(axis=2).astype(np.float32)
