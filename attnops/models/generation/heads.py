"""Attention health of a decoder-only model: prompt entropy and lookback per head.

`models.attention.attention_entropy` normalises every query's entropy by log(all keys),
which suits a bidirectional encoder. Under a causal mask query i sees only i + 1 keys, so
that normaliser would rate a head spreading evenly over its visible prefix far below 1;
here each query is normalised by log(i + 1) instead (the first query, with one key, has no
entropy to speak of and is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnops.models import plots
from attnops.models.attention import eager_attention

INPUT_BLIND_LOOKBACK = 0.05
"""A head whose lookback ratio stays below this on every output never reads the input."""


@dataclass(frozen=True)
class HeadReport:
    """Matrices are layers x heads."""

    entropy: np.ndarray
    """Mean causal-normalised attention entropy over prompt tokens: 0 = one token, 1 = uniform."""
    lookback: np.ndarray
    """Mean lookback ratio over the evaluated outputs (share of attention on the input)."""
    input_blind_heads: list[tuple[int, int]]
    """(layer, head) whose lookback ratio stayed below `INPUT_BLIND_LOOKBACK` on every output."""

    def summary(self) -> dict[str, object]:
        """JSON-ready form for evaluation.json."""
        return {
            "entropy": self.entropy.tolist(),
            "lookback": self.lookback.tolist(),
            "input_blind_heads": self.input_blind_heads,
            "input_blind_lookback": INPUT_BLIND_LOOKBACK,
        }

    def metrics(self) -> dict[str, float]:
        return {
            "attention_entropy_mean": float(self.entropy.mean()),
            "attention_entropy_min": float(self.entropy.min()),
            "lookback_ratio_mean": float(self.lookback.mean()),
            "attention_input_blind_heads": float(len(self.input_blind_heads)),
        }

    def write_pngs(self, out_dir: Path) -> list[Path]:
        """Heatmaps of prompt entropy and lookback ratio, as classification draws entropy."""
        files = [out_dir / "attention_entropy.png", out_dir / "lookback_ratio.png"]
        plots.head_matrix_png(
            self.entropy, "Prompt attention entropy (causal-normalised)", files[0], vmin=0, vmax=1
        )
        plots.head_matrix_png(
            self.lookback, "Lookback ratio (attention on the input)", files[1], vmin=0, vmax=1
        )
        return files


@torch.no_grad()
def prompt_entropy(model, prompts: list[list[int]], *, device: torch.device) -> np.ndarray:
    """Mean over prompts of each head's causal-normalised attention entropy, (layers, heads).

    Prompts run one at a time: no padding to mask, and one prompt's attention maps
    (layers x heads x tokens^2) are the most held in memory.
    """
    was_training = model.training
    model.eval()
    total = None
    with eager_attention(model):
        for ids in prompts:
            if len(ids) < 2:
                continue  # a single query attends to itself only
            input_ids = torch.tensor([ids], device=device)
            attentions = model(input_ids=input_ids, output_attentions=True).attentions
            n_keys = torch.arange(1, len(ids) + 1, device=device, dtype=torch.float32)
            per_layer = []
            for att in attentions:  # (1, heads, tokens, tokens), zeros above the diagonal
                p = att[0].float().clamp_min(1e-12)
                h = -(p * p.log()).tril().sum(-1)  # (heads, tokens)
                per_layer.append((h[:, 1:] / n_keys[1:].log()).mean(-1))
            values = torch.stack(per_layer).cpu().numpy().astype(np.float64)
            total = values if total is None else total + values
    model.train(was_training)
    if total is None:
        raise ValueError("prompt entropy needs at least one prompt of 2 or more tokens")
    return (total / sum(len(ids) >= 2 for ids in prompts)).astype(np.float32)


def head_report(
    model, prompts: list[list[int]], lookback: np.ndarray, *, device: torch.device
) -> HeadReport:
    """Entropy over `prompts` and lookback summary of the outputs decoded from them.

    Args:
        lookback: (outputs, layers, heads) mean lookback ratio of each decoded output.
    """
    blind = lookback.max(axis=0) < INPUT_BLIND_LOOKBACK
    return HeadReport(
        entropy=prompt_entropy(model, prompts, device=device),
        lookback=lookback.mean(axis=0),
        input_blind_heads=[(int(layer), int(head)) for layer, head in np.argwhere(blind)],
    )
