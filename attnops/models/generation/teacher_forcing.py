"""Signals of given outputs, as if the model had written them, several per forward pass.

Fitting a detector needs the signals of hundreds of labelled outputs; one forward pass each
leaves a CPU's matrix units half idle on ~170-token sequences. Here sequences are right-padded
into batches (padding at the end changes nothing before it under a causal mask) and each
row's statistics are read from its own positions, with the same definitions as
`decode.teacher_forced_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from attnops.models.attention import eager_attention
from attnops.models.generation.decode import Signals, fact_token_flags, teacher_forced_ids
from attnops.models.generation.lookback import lookback_ratios, mean_lookback


@torch.no_grad()
def teacher_forced_batch(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[str],
    device,
    *,
    batch_size: int = 8,
) -> list[Signals]:
    """`decode.teacher_forced` for many (prompt, output text) pairs, in input order."""
    ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in outputs]
    order = np.argsort([len(p) + len(o) for p, o in zip(prompts, ids, strict=True)])
    results: list[Signals | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model):
            for first in range(0, len(order), batch_size):
                rows = order[first : first + batch_size]
                signals = _batch(model, [prompts[r] for r in rows], [ids[r] for r in rows], device)
                for row, signal in zip(rows, signals, strict=True):
                    results[row] = replace(
                        signal, fact_tokens=fact_token_flags(tokenizer, ids[row])
                    )
    finally:
        model.train(was_training)
    return results


def _batch(model, prompts, outputs, device) -> list[Signals]:
    if any(len(o) == 0 for o in outputs) or any(len(p) == 0 for p in prompts):
        # Rare edge cases keep the one-at-a-time definitions (empty output: ratios of 1).
        return [
            teacher_forced_ids(model, p, o, device) for p, o in zip(prompts, outputs, strict=True)
        ]
    totals = [len(p) + len(o) for p, o in zip(prompts, outputs, strict=True)]
    width = max(totals)
    ids = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        ids[row, : totals[row]] = torch.tensor(list(p) + list(o), device=device)
        mask[row, : totals[row]] = 1
    # Only queries from the shortest prompt's last token on write an output token: the
    # output layer (576 x 49,152 for SmolLM2) skips the rest, ~60% of its positions.
    first_query = min(len(p) for p in prompts) - 1
    out = model(
        input_ids=ids,
        attention_mask=mask,
        use_cache=False,
        output_attentions=True,
        logits_to_keep=width - first_query,
    )
    keys = torch.arange(width, device=device)
    signals = []
    for row, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        n_prompt, n_total = len(p), totals[row]
        # The query at position q writes token q + 1: queries n_prompt - 1 .. n_total - 2.
        queries = torch.arange(n_prompt - 1, n_total - 1, device=device)
        logits = out.logits[row, n_prompt - 1 - first_query : n_total - 1 - first_query].float()
        target = torch.tensor(list(o), device=device)
        logprobs = torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
        context = (keys < n_prompt)[None]
        generated = ((keys[None] >= n_prompt) & (keys[None] <= queries[:, None]))[None]
        ratios = [
            lookback_ratios(a[row : row + 1, :, queries], context, generated)[0]
            for a in out.attentions
        ]
        signals.append(Signals(logprobs.cpu().tolist(), mean_lookback(torch.stack(ratios))))
    return signals
