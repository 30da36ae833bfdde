"""Greedy decoding with the KV cache in our own loop, with per-step signals on the fly.

`model.generate(output_attentions=True)` keeps every step's attention maps until the end
(memory grows with output length); this loop reduces each step to what the hallucination
detector and the latency gate need (chosen-token log-probability, lookback ratios, timings)
and drops the maps. Batches are left-padded so every sequence's next token sits in the last
column; position ids are counted over real tokens, as `generate` does, so a padded prompt
decodes like `generate` on the same padded batch.

`teacher_forced` gives the same signals for an output the model did not write (labelled
replies): one forward pass over prompt + output.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from attnops.models.attention import eager_attention
from attnops.models.generation.kv_cache import cache_of, with_cache
from attnops.models.generation.lookback import LookbackAccumulator, lookback_ratios, mean_lookback

_DIGIT = re.compile(r"[0-9]")


@dataclass(frozen=True)
class Signals:
    """What the hallucination detector reads from one (prompt, output) pair."""

    token_logprobs: list[float]
    """Natural-log probability of each output token given everything before it."""
    lookback: np.ndarray
    """(layers, heads) lookback ratio averaged over the output (see `lookback`)."""
    fact_tokens: Sequence[bool] = ()
    """Per output token: True when it holds a digit (amounts, days, dates, order numbers):
    where a fluent swap of one valid fact for another shows as a less likely token. Empty:
    unknown, read as no fact tokens."""


def fact_token_flags(tokenizer, token_ids: Sequence[int]) -> list[bool]:
    """True for each token whose text holds a digit (see `Signals.fact_tokens`)."""
    return [bool(_DIGIT.search(t or "")) for t in tokenizer.convert_ids_to_tokens(list(token_ids))]


@dataclass(frozen=True)
class Decoded:
    """One greedy output. The end-of-sequence token is not part of the output."""

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    lookback: np.ndarray | None
    """(layers, heads) mean lookback ratio; None when decoded with signals=False."""
    ttft_s: float
    """Time to first token: the prefill of this sequence's batch."""
    inter_token_s: list[float]
    """Wall time of each later decoding step this sequence took part in."""
    stopped_at_eos: bool
    """False when the output was cut at max_new_tokens."""
    fact_tokens: list[bool]
    """Per token: holds a digit (see `Signals.fact_tokens`)."""

    @property
    def signals(self) -> Signals:
        if self.lookback is None:
            raise ValueError("decoded with signals=False: no lookback ratios; pass signals=True")
        return Signals(self.token_logprobs, self.lookback, self.fact_tokens)


def eos_ids(model, tokenizer) -> set[int]:
    """End tokens from the generation config (may be a list) and the tokenizer."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    if not ids:
        raise ValueError("neither the tokenizer nor the generation config names an eos token")
    return ids


def _pad_left(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def _timed(device) -> float:
    """A clock read after the device has finished its queued work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def _decode_batch(model, tokenizer, prompts, *, max_new_tokens, device, signals, eos):
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    ids, mask = _pad_left(prompts, pad_id, device)
    batch, width = ids.shape
    eos_t = torch.tensor(sorted(eos), device=device)
    config = model.config
    lookback = LookbackAccumulator(batch, config.num_hidden_layers, config.num_attention_heads)
    tokens = [[] for _ in range(batch)]
    logprobs = [[] for _ in range(batch)]
    gaps = [[] for _ in range(batch)]
    finished = np.zeros(batch, dtype=bool)
    ratios: list[torch.Tensor] = []  # per layer (batch, heads), of the step just run

    start = _timed(device)
    # Prefill: the step that writes the first token has no lookback ratio, so no maps needed.
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True,
                logits_to_keep=1)  # fmt: skip
    for step in range(max_new_tokens):
        step_logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        chosen = step_logprobs.argmax(-1)
        is_eos = torch.isin(chosen, eos_t).cpu().numpy()
        chosen_logprob = step_logprobs.gather(1, chosen[:, None])[:, 0].cpu().numpy()
        now = _timed(device)
        if step == 0:
            ttft_s = now - start
        keeps = ~finished & ~is_eos
        if step > 0 and signals:
            lookback.add(ratios, keeps)
        if step > 0:
            for row in np.flatnonzero(~finished):
                gaps[row].append(now - start)
        for row in np.flatnonzero(keeps):
            tokens[row].append(int(chosen[row]))
            logprobs[row].append(float(chosen_logprob[row]))
        finished |= is_eos
        if finished.all() or step + 1 == max_new_tokens:
            break
        start = now
        # Finished rows keep decoding (their tokens are dropped) so the batch stays rectangular.
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        position = position[:, -1:] + 1
        out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=position,
                    **with_cache(cache_of(out)), use_cache=True,
                    output_attentions=signals)  # fmt: skip
        if signals:
            keys = torch.arange(mask.shape[1], device=device)
            context = mask.bool() & (keys < width)
            generated = (keys >= width).expand(batch, 1, len(keys))
            ratios = [lookback_ratios(a, context, generated)[:, :, 0] for a in out.attentions]
    return [
        Decoded(
            text=tokenizer.decode(tokens[row], skip_special_tokens=True),
            token_ids=tokens[row],
            token_logprobs=logprobs[row],
            lookback=lookback.mean(row) if signals else None,
            ttft_s=ttft_s,
            inter_token_s=gaps[row],
            stopped_at_eos=bool(finished[row]),
            fact_tokens=fact_token_flags(tokenizer, tokens[row]),
        )
        for row in range(batch)
    ]


def decode(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    device,
    signals: bool = True,
    batch_size: int = 8,
) -> list[Decoded]:
    """Greedy outputs for token-id prompts, in input order.

    Args:
        model: A causal LM already on `device`.
        tokenizer: Its tokenizer (eos and pad ids, decoding to text).
        prompts: Prompt token ids (chat template already applied), one list per input.
        max_new_tokens: Most tokens written per output (an eos ends it earlier).
        device: Where `model` lives.
        signals: Compute lookback ratios; this needs eager attention, switched on for the
            call and restored after. Log-probabilities and timings are always kept.
        batch_size: Prompts decoded together (left-padded).

    Returns:
        One `Decoded` per prompt.

    Raises:
        ValueError: On an empty prompt, max_new_tokens < 1 or batch_size < 1.
    """
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"prompts {empty[:5]} are empty; every prompt needs at least one token")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}, batch_size={batch_size}: need >= 1")
    eos = eos_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    results: list[Decoded] = []
    try:
        with eager_attention(model) if signals else contextlib.nullcontext():
            for first in range(0, len(prompts), batch_size):
                results += _decode_batch(
                    model, tokenizer, prompts[first : first + batch_size],
                    max_new_tokens=max_new_tokens, device=device, signals=signals, eos=eos,
                )  # fmt: skip
    finally:
        model.train(was_training)
    return results


def teacher_forced(model, tokenizer, prompt: Sequence[int], output_text: str, device) -> Signals:
    """Signals of a given output, as if the model had written it: one forward pass.

    The output is tokenised without special tokens and without an eos, so its signals match
    those `decode` reports for the same tokens.

    Args:
        model: A causal LM already on `device`.
        tokenizer: Its tokenizer.
        prompt: Prompt token ids (chat template applied, generation prompt added).
        output_text: The output to score (e.g. a labelled reply).
        device: Where `model` lives.

    Returns:
        `Signals` with one log-probability per output token; an empty output gets no
        log-probabilities and lookback ratios of 1.
    """
    output = tokenizer(output_text, add_special_tokens=False)["input_ids"]
    signals = teacher_forced_ids(model, prompt, output, device)
    return replace(signals, fact_tokens=fact_token_flags(tokenizer, output))


@torch.no_grad()
def teacher_forced_ids(model, prompt: Sequence[int], output: Sequence[int], device) -> Signals:
    """`teacher_forced` for an output given as token ids (e.g. `Decoded.token_ids`); without a
    tokenizer its `fact_tokens` stay empty."""
    if len(prompt) == 0:
        raise ValueError("the prompt is empty; teacher forcing needs at least one prompt token")
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    if len(output) == 0:
        return Signals([], np.ones((n_layers, n_heads), dtype=np.float32))
    n_prompt, n_total = len(prompt), len(prompt) + len(output)
    ids = torch.tensor([list(prompt) + list(output)], device=device)
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model):
            out = model(input_ids=ids, use_cache=False, output_attentions=True)
    finally:
        model.train(was_training)
    # The query at position q writes token q + 1: queries n_prompt - 1 .. n_total - 2.
    queries = torch.arange(n_prompt - 1, n_total - 1, device=device)
    logits = out.logits[0, n_prompt - 1 : n_total - 1].float()
    target = torch.tensor(list(output), device=device)
    logprobs = torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
    keys = torch.arange(n_total, device=device)
    context = (keys < n_prompt)[None]
    generated = ((keys[None] >= n_prompt) & (keys[None] <= queries[:, None]))[None]
    ratios = [lookback_ratios(a[:, :, queries], context, generated)[0] for a in out.attentions]
    return Signals(logprobs.cpu().tolist(), mean_lookback(torch.stack(ratios)))
