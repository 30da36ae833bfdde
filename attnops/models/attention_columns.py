"""Column names of per-head attention entropy in a record frame: `l{layer}h{head}`.

Built here and parsed here, so the reference profile, the inference log's windows, the
drift checks and the drift report agree on them. No torch: the log reader imports this.
"""

from __future__ import annotations

import re

_ENTROPY_COLUMN = re.compile(r"^l(\d+)h(\d+)$")


def entropy_columns(layers: int, heads: int) -> list[str]:
    """The entropy column names of a model with `layers` x `heads` heads, layer by layer."""
    return [f"l{layer}h{head}" for layer in range(layers) for head in range(heads)]


def entropy_head(column: object) -> tuple[int, int] | None:
    """(layer, head) of an entropy column name; None for any other column."""
    match = _ENTROPY_COLUMN.match(str(column))
    return None if match is None else (int(match.group(1)), int(match.group(2)))
