"""What a generative version's evaluation stores: its per-input table and reference profile,
both redacted.

The per-input table (`evaluation/per_input.parquet`) is what the gate pairs with the
champion's; the reference profile (`reference_profile/reference_generation.parquet`) is what
the monitor compares live traffic with (prompt and output token counts, output lengths,
detector scores and flags, lookback ratios and PII leaks per test input). Every text
column (source, context, reference, output) is PII-redacted before it is stored; the
outputs' PII leaks (PII not in their own input) are found before redaction and kept as
entity names, so the gate and the monitor can still judge them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from attnops.models import report_json
from attnops.models.evaluate import EVALUATION_JSON
from attnops.models.generation.evaluate import PER_INPUT
from attnops.monitors import pii
from attnops.monitors.gate_generation_operational import PII_LEAK_COLUMN, pii_leaks
from attnops.monitors.generation_monitor import GENERATION_PROFILE_TABLE, OUTPUT_PII_LEAKS

TEXT_COLUMNS = ("source", "context", "reference", "output", "baseline_output")


def save_generation_reference(records: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Redact the evaluation's per-input table in place (leaks found first) and write the
    redacted reference records; returns the reference file written."""
    table_path = out_dir / PER_INPUT
    if table_path.exists():
        table = pd.read_parquet(table_path)
        leaks = pii_leaks(table)
        table[PII_LEAK_COLUMN] = [",".join(sorted({h.entity for h in row})) for row in leaks]
        redacted = redact_texts(table)
        redacted.to_parquet(table_path, index=False)
        _report_leaks(out_dir / EVALUATION_JSON, redacted)
    path = out_dir / GENERATION_PROFILE_TABLE
    reference = records.copy()
    # As the inference log stores them: what the monitor's PII-leak rate is compared with.
    reference[OUTPUT_PII_LEAKS] = [
        ",".join(sorted({h.entity for h in row})) for row in pii_leaks(records)
    ]
    redact_texts(reference).to_parquet(path, index=False)
    return [path]


def _report_leaks(evaluation_json: Path, table: pd.DataFrame) -> None:
    """Add the PII leakage (count, entities, redacted examples) to evaluation.json."""
    leaking = table[table[PII_LEAK_COLUMN] != ""]
    report = json.loads(evaluation_json.read_text())
    report["pii_leakage"] = {
        "outputs": len(leaking),
        "of": len(table),
        "entities": sorted({e for v in leaking[PII_LEAK_COLUMN] for e in v.split(",")}),
        "examples": leaking["output"].head(5).tolist(),
    }
    evaluation_json.write_text(report_json.dumps(report))


def redact_texts(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with every text column redacted and `COLUMN_has_pii` flags beside them."""
    table = frame.copy()
    for column in [c for c in TEXT_COLUMNS if c in table.columns]:
        texts = table[column].fillna("").astype(str).tolist()
        found = pii.find_pii(texts)
        table[f"{column}_has_pii"] = [bool(hits) for hits in found]
        table[column] = pii.redact(texts, found)
    return table
