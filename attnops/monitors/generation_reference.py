"""The reference profile of a generative version: its evaluation outputs, stored redacted.

What part 2's monitor compares live traffic with: prompt and output token counts, output
lengths, detector scores and lookback ratios per test input, with every text column
(source, context, reference, output) PII-redacted before it is stored.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnops.monitors import pii

GENERATION_PROFILE_TABLE = "reference_generation.parquet"
TEXT_COLUMNS = ("source", "context", "reference", "output", "prompt")


def save_generation_reference(records: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write the redacted records into `out_dir`; returns the file written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = records.copy()
    for column in [c for c in TEXT_COLUMNS if c in table.columns]:
        texts = table[column].fillna("").astype(str).tolist()
        found = pii.find_pii(texts)
        table[f"{column}_has_pii"] = [bool(hits) for hits in found]
        table[column] = pii.redact(texts, found)
    path = out_dir / GENERATION_PROFILE_TABLE
    table.to_parquet(path, index=False)
    return [path]
