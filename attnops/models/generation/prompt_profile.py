"""Compact prompt embeddings for a generative version's reference profile.

What the monitor compares live prompts with: each prompt's last hidden state, mean-pooled
over its tokens, projected by a PCA fitted on the evaluation's prompts to
`evaluation.embedding_dim` dimensions (the same projection, stored with the profile, is
applied to live prompts, so both sit in one space).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnops.models.profile import EmbeddingProjection, write_profile_summary


@torch.inference_mode()
def prompt_embeddings(model, prompts: list[list[int]], device, batch_size: int = 8) -> np.ndarray:
    """(n, hidden) mean-pooled last hidden states of the prompts, right-padded in batches."""
    pooled = []
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([list(p) + [0] * (width - len(p)) for p in batch], device=device)
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in batch], device=device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask[..., None].float()
        pooled.append(((hidden * weights).sum(1) / weights.sum(1)).cpu().numpy())
    return np.concatenate(pooled)


def write_prompt_profile(
    embeddings: np.ndarray, width: int, out_dir: Path, summary: dict[str, object]
) -> tuple[np.ndarray, Path]:
    """Projected embeddings (n, <= width) and the summary file holding the projection."""
    projection = EmbeddingProjection.fit(embeddings, width)
    path = write_profile_summary(
        out_dir, projection=projection, summary={"task": "generation", **summary}
    )
    return projection.transform(embeddings).astype(np.float32), path
