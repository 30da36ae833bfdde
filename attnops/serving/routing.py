"""Canary routing: a stable share of request keys goes to the canary version.

The bucket of a key is a hash, not a random draw, so the same user (or session, or
ticket) always sees the same version while the canary runs, and the share of keys routed
to the canary converges on `canary_share`.
"""

from __future__ import annotations

import hashlib

from attnops.models.aliases import CANARY, CHAMPION


def bucket(key: str) -> float:
    """A number in [0, 1) fixed by the key and spread uniformly over keys."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_route(key: str, canary_share: float, *, has_canary: bool) -> str:
    """`canary` for the keys whose bucket falls below the share while a canary is served."""
    return CANARY if has_canary and bucket(key) < canary_share else CHAMPION
