"""Prefix caching: the KV states of a prompt's shared beginning, computed once and reused.

Every ticket-reply prompt starts with the chat template, the system instruction and the
knowledge-base article; only the customer's message differs. `shared_prefix_len` finds where
that shared part ends in a prompt's token ids; `PrefixCache` keeps the KV states of such
prefixes (least recently used dropped first, within one memory budget for the whole server)
keyed by a hash of their token ids, so a request whose prefix is cached runs its prefill
over the message alone.
Measured on SmolLM2 on a CPU: ~5x less time to first token for a 320-token shared prefix.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import Counter, OrderedDict
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
    """KV states of prompt prefixes, least recently used dropped first, within one budget
    that every engine of the process shares (thread-safe): `serving.prefix_cache_mb` is what
    the server's prefix caches take together, with a champion and a canary loaded too.

    Engines read and write through their own `view`: the same tokens give other states under
    other weights, so each engine's entries are keyed apart and counted apart.

    Args:
        budget_mb: memory the cached states may take; 0 turns caching off (every lookup misses).
    """

    def __init__(self, budget_mb: float) -> None:
        self.budget_bytes = int(budget_mb * 2**20)
        self._entries: OrderedDict[tuple[int, str], KV] = OrderedDict()
        self._owned: Counter[int] = Counter()  # bytes per view
        self.bytes = 0
        """What every view's entries take together."""
        self._views = itertools.count()
        self._lock = threading.Lock()

    def bytes_of(self, owner: int) -> int:
        """What one view's entries take."""
        return self._owned[owner]

    def view(self) -> PrefixCacheView:
        """A new engine's view: its own entries, under the shared budget."""
        return PrefixCacheView(self, next(self._views))

    def _get(self, owner: int, token_ids: Sequence[int]) -> KV | None:
        key = (owner, prefix_key(token_ids))
        with self._lock:
            kv = self._entries.get(key)
            if kv is not None:
                self._entries.move_to_end(key)
            return kv

    def _put(self, owner: int, token_ids: Sequence[int], kv: KV) -> bool:
        size = kv_bytes(kv)
        if size > self.budget_bytes:
            return False
        key = (owner, prefix_key(token_ids))
        with self._lock:
            self._pop(key)
            while self._entries and self.bytes + size > self.budget_bytes:
                self._pop(next(iter(self._entries)))
            self._entries[key] = kv
            self._owned[owner] += size
            self.bytes += size
        return True

    def _drop(self, owner: int) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == owner]:
                self._pop(key)

    def _pop(self, key: tuple[int, str]) -> None:
        """Forget one entry (with the lock held)."""
        kv = self._entries.pop(key, None)
        if kv is not None:
            size = kv_bytes(kv)
            self._owned[key[0]] -= size
            self.bytes -= size


class PrefixCacheView:
    """One engine's entries of a shared `PrefixCache`, with its own hit and miss counts."""

    def __init__(self, cache: PrefixCache, owner: int) -> None:
        self._cache, self._owner = cache, owner
        self.hits = 0
        self.misses = 0

    @property
    def budget_bytes(self) -> int:
        """The shared budget (0: caching is off)."""
        return self._cache.budget_bytes

    @property
    def bytes(self) -> int:
        """What this view's entries take."""
        return self._cache.bytes_of(self._owner)

    @property
    def hit_rate(self) -> float:
        """Hits over lookups so far (0 before the first)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def get(self, token_ids: Sequence[int]) -> KV | None:
        """The states of exactly this prefix, or None (counted as a hit or a miss)."""
        kv = self._cache._get(self._owner, token_ids)
        if kv is None:
            self.misses += 1
        else:
            self.hits += 1
        return kv

    def put(self, token_ids: Sequence[int], kv: KV) -> bool:
        """Keep `kv` for this prefix, dropping the least recently used entries of any view
        to make room.

        The tensors are stored as given: the caller must not change them in place (a
        `DynamicCache` never does; it grows by concatenation into new tensors).

        Returns:
            False when the states alone exceed the budget (nothing is kept).
        """
        return self._cache._put(self._owner, token_ids, kv)

    def clear(self) -> None:
        """Drop this view's entries (its engine stopped): their room goes to the others."""
        self._cache._drop(self._owner)
