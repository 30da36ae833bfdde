"""Reports as strict JSON, for people and their tools.

Python's `json` writes NaN and Infinity, which JSON does not have: the MLflow UI's viewer,
`jq` and every browser refuse such a file. A report has undefined numbers (an empty
calibration bin, an out-of-scope AUROC on data without out-of-scope rows); it says `null`.
"""

from __future__ import annotations

import json
import math

import numpy as np


def dumps(payload: object) -> str:
    """`payload` as indented JSON; non-finite floats become null, other objects their str."""
    return json.dumps(_finite(payload), indent=2, allow_nan=False, default=str)


def _finite(value: object) -> object:
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_finite(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
