"""Prefix caching: the KV states of a prompt's shared beginning, computed once and reused.

Every ticket-reply prompt starts with the chat template, the system instruction and the
knowledge-base article; only the customer's message differs. `shared_prefix_len` finds where
that shared part ends in a prompt's token ids; `PrefixCache` keeps the KV states of such
prefixes (least recently used dropped first, within a memory budget) keyed by a hash of
their token ids, so a request whose prefix is cached runs its prefill over the message alone.
Measured on SmolLM2 on a CPU: ~5x less time to first token for a 320-token shared prefix.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from attnops.models.generation.data import render_prompt_text
from attnops.spec_generation import GenerationSpec

KV = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Per layer (keys, values), each (1, kv_heads, tokens, head_dim)."""

_MARK = "\u2063attnops-message\u2063"  # invisible separator: never in a real message


def shared_prefix_len(tokenizer, spec: GenerationSpec, context: str, prompt: Sequence[int]) -> int:
    """Leading tokens of `prompt` that every prompt with the same `context` shares.

    The prompt is rendered with a marker in place of the message and cut before it; the
    shared part is the longest run of tokens that text and `prompt` have in common, less one
    token (a token at the seam can merge with the message's first characters). At least one
    prompt token is always left to the request's own prefill (it writes the first token).
    """
    text = render_prompt_text(tokenizer, spec.instruction, _MARK, context)
    head = tokenizer(text[: text.index(_MARK)], add_special_tokens=False)["input_ids"]
    same = 0
    for a, b in zip(head, prompt, strict=False):
        if a != b:
            break
        same += 1
    return max(0, min(same - 1, len(prompt) - 1))


def prefix_key(token_ids: Sequence[int]) -> str:
    """The cache key of a token prefix."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()


def kv_bytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixCache:
    """KV states of prompt prefixes, LRU within `budget_mb` (thread-safe).

    Args:
        budget_mb: memory the cached states may take; 0 turns caching off (every lookup misses).
    """

    def __init__(self, budget_mb: float) -> None:
        self.budget_bytes = int(budget_mb * 2**20)
        self._entries: OrderedDict[str, KV] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def hit_rate(self) -> float:
        """Hits over lookups so far (0 before the first)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token_ids: Sequence[int]) -> KV | None:
        """The states of exactly this prefix, or None (counted as a hit or a miss)."""
        key = prefix_key(token_ids)
        with self._lock:
            kv = self._entries.get(key)
            if kv is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return kv

    def put(self, token_ids: Sequence[int], kv: KV) -> bool:
        """Keep `kv` for this prefix, dropping the least recently used to make room.

        The tensors are stored as given: the caller must not change them in place (a
        `DynamicCache` never does; it grows by concatenation into new tensors).

        Returns:
            False when the states alone exceed the budget (nothing is kept).
        """
        size = kv_bytes(kv)
        if size > self.budget_bytes:
            return False
        key = prefix_key(token_ids)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= kv_bytes(old)
            while self._entries and self.bytes + size > self.budget_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= kv_bytes(dropped)
            self._entries[key] = kv
            self.bytes += size
        return True
