"""The KV cache's argument and output field under either transformers 5 spelling.

transformers 5.2x renamed `past_key_values` to `cache` (the model argument and the output
field; the old argument warns until 5.40). An older 5.x silently takes `cache=` into its
`**kwargs` and decodes without a cache, so every call site goes through these two names.
"""

from __future__ import annotations

import dataclasses

from transformers.modeling_outputs import CausalLMOutputWithPast

_NEW = "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
CACHE_ARG = "cache" if _NEW else "past_key_values"


def with_cache(cache) -> dict:
    """The keyword argument that hands `cache` to a causal LM's forward."""
    return {CACHE_ARG: cache}


def cache_of(output):
    """The KV cache a forward with `use_cache=True` returned."""
    return getattr(output, CACHE_ARG)
