"""Attention entropy of chosen inputs, read off an ordinary (SDPA) forward pass.

`attention.attention_entropy` runs a second, eager forward pass to get attention weights: as
costly as answering the input again. The weights are softmax(Q K^T * scale) per head, and the
served pass computes Q and K anyway, so hooks on each self-attention layer's `query` and `key`
projections keep the rows of the chosen inputs and the entropy follows from them for a few
small matrix products. This needs BERT-style layers (`query`, `key`, `attention_head_size`,
absolute positions); `AttentionCapture.attach` checks the result against the eager pass on a
probe input and returns None where they differ, so callers fall back to the eager pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from attnops.models.attention import attention_entropy
from attnops.models.batching import Encoded


class AttentionCapture:
    """Hooks on one model object (one per thread: the hooks keep per-pass state).

    Use: `expect(ids)` with the token ids of the inputs wanted, run the model on batches
    that contain them (padded, in any order, among others), then `entropies()`.
    """

    def __init__(self, model, layers: list[torch.nn.Module]) -> None:
        self._layers = layers
        self._expected: dict[tuple[int, ...], list[int]] = {}  # ids -> indexes in expect()
        self._rows: list[tuple[int, int, int]] = []  # (row in batch, first index, tokens)
        self._kept: dict[tuple[int, str], torch.Tensor] = {}
        self._handles = [model.register_forward_pre_hook(self._find_rows, with_kwargs=True)]
        for index, layer in enumerate(layers):
            self._handles.append(layer.query.register_forward_hook(self._keeper(index, "q")))
            self._handles.append(layer.key.register_forward_hook(self._keeper(index, "k")))

    @classmethod
    def attach(cls, model, probe_ids: list[int], pad_id: int) -> AttentionCapture | None:
        """Hooks on `model` if its layers are BERT-style and agree with the eager pass on
        `probe_ids` (entropies within 1e-4); else None, and no hooks."""
        layers = [
            m
            for m in model.modules()
            if isinstance(getattr(m, "query", None), torch.nn.Linear)
            and isinstance(getattr(m, "key", None), torch.nn.Linear)
            and hasattr(m, "attention_head_size")
        ]
        if len(layers) != model.config.num_hidden_layers:
            return None
        capture = cls(model, layers)
        capture.expect([probe_ids])
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(
                input_ids=torch.tensor([probe_ids], device=device),
                attention_mask=torch.ones(1, len(probe_ids), dtype=torch.long, device=device),
            )
        fast = capture.entropies()[0]
        eager = attention_entropy(
            model, Encoded([probe_ids], None, [len(probe_ids)]), pad_id=pad_id, device=device
        )[0]
        if np.allclose(fast, eager, atol=1e-4):
            return capture
        for handle in capture._handles:
            handle.remove()
        return None

    def expect(self, input_ids: Sequence[list[int]]) -> None:
        """The inputs (token ids, unpadded) whose attention the next passes keep."""
        self._expected = {}
        for i, ids in enumerate(input_ids):
            self._expected.setdefault(tuple(ids), []).append(i)
        self._kept.clear()

    def entropies(self) -> dict[int, np.ndarray]:
        """Index in `expect`'s list -> (layers, heads) mean normalised attention entropy,
        for the expected inputs the passes met; then forgets them."""
        out = {}
        for indexes in self._expected.values():
            first = indexes[0]
            if (first, "q0") not in self._kept:
                continue
            per_layer = [
                self._entropy(self._kept[(first, f"q{n}")], self._kept[(first, f"k{n}")], layer)
                for n, layer in enumerate(self._layers)
            ]
            entropy = torch.stack(per_layer).float().cpu().numpy()
            out.update(dict.fromkeys(indexes, entropy))
        self._expected, self._rows = {}, []
        self._kept.clear()
        return out

    def _find_rows(self, _module, _args, kwargs) -> None:
        self._rows = []
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if not self._expected or ids is None or mask is None:  # passed by keyword only
            return
        for row, (seq, n) in enumerate(zip(ids.tolist(), mask.sum(1).tolist(), strict=True)):
            indexes = self._expected.get(tuple(seq[:n]))
            if indexes is not None:
                self._rows.append((row, indexes[0], n))

    def _keeper(self, index: int, kind: str):
        def keep(_module, _args, output: torch.Tensor) -> None:
            for row, key, n in self._rows:
                self._kept[(key, f"{kind}{index}")] = output[row, :n].detach()

        return keep

    @staticmethod
    def _entropy(q: torch.Tensor, k: torch.Tensor, layer) -> torch.Tensor:
        """Per head: mean over queries of the entropy of softmax(q k^T * scale), over
        log(tokens), as `attention.attention_entropy` computes it for an unpadded input."""
        n, d = q.shape[0], layer.attention_head_size
        scale = getattr(layer, "scaling", d**-0.5)
        q = q.float().view(n, -1, d).transpose(0, 1)  # (heads, n, d)
        k = k.float().view(n, -1, d).transpose(0, 1)
        p = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1).clamp_min(1e-12)
        h = -(p * p.log()).sum(-1).mean(-1)  # (heads,)
        return h / math.log(max(n, 2))
