"""Reports parse in strict JSON readers (the MLflow UI, jq, a browser)."""

import json
import math
from pathlib import Path

import numpy as np

from attnops.models import report_json


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_undefined_numbers_are_null_and_numpy_values_plain():
    report = {
        "calibration_bins": [{"count": np.int64(0), "accuracy": math.nan}],
        "auroc": np.float32("nan"),
        "entropy": np.array([0.5, np.inf]),
        "rate": np.float64(0.25),
        "where": Path("evaluation"),
    }
    assert _strict(report_json.dumps(report)) == {
        "calibration_bins": [{"count": 0, "accuracy": None}],
        "auroc": None,
        "entropy": [0.5, None],
        "rate": 0.25,
        "where": "evaluation",
    }
