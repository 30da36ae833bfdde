"""Training rows from corrected replies: what `retrain` fine-tunes a generative version on.

A reviewer's reference output (a correction, via `/feedback` or `attnops labels`) is the
reply the logged prompt should have had; with the prompt's source and context it is one
training example. The log holds both PII-redacted, so the model never trains on raw PII.
"""

from __future__ import annotations

import pandas as pd

from attnops.models.generation.data import CONTEXT, SOURCE, TARGET
from attnops.models.text_checks import is_empty_text
from attnops.spec import DataSpec

REFERENCE = "reference"
NEEDED = (SOURCE, CONTEXT, REFERENCE)


class NoCorrectionsError(ValueError):
    """The window holds no request with a reference output."""


def training_rows(window: pd.DataFrame, data: DataSpec) -> pd.DataFrame:
    """One training row per distinct logged prompt that has a reference output.

    Rows without a reference (None or blank) are skipped. A prompt (source and context)
    corrected more than once keeps its newest reference: the window is oldest first, and a
    later correction reflects what is true now (e.g. after a policy change). Rows that only
    differ in the model's output collapse into one.

    Args:
        window: generation-log rows (`GenerationLogReader.window`), oldest first, with
            `source`, `context` ("" when none) and `reference` (None when none).
        data: the spec's data section: the rows come back in its source, target and (when
            set) context column names, ready to join the training split.

    Raises:
        ValueError: a needed column is missing from `window`, or the prompts have context
            (articles) but `data.context_column` is not set (training without them would
            teach the model to state facts it was not given).
        NoCorrectionsError: no row has a reference.
    """
    missing = [column for column in NEEDED if column not in window.columns]
    if missing:
        raise ValueError(
            f"the log window has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(map(str, window.columns)) or 'none'}); read it with "
            "GenerationLogReader.window"
        )
    corrected = window[~window[REFERENCE].map(is_empty_text)]
    if corrected.empty:
        raise NoCorrectionsError(
            f"none of the {len(window)} logged requests has a reference output; record "
            "corrected replies with `attnops labels --spec SPEC --file FILE` (columns "
            "request_id,reference) or POST /feedback first"
        )
    rows = pd.DataFrame(
        {
            SOURCE: corrected[SOURCE].astype(str),
            CONTEXT: corrected[CONTEXT].fillna("").astype(str),
            TARGET: corrected[REFERENCE].astype(str),
        }
    ).drop_duplicates(subset=[SOURCE, CONTEXT], keep="last")
    names = {SOURCE: data.source_column, TARGET: data.target_column}
    if data.context_column:
        names[CONTEXT] = data.context_column
    elif rows[CONTEXT].str.strip().ne("").any():
        raise ValueError(
            f"{int(rows[CONTEXT].str.strip().ne('').sum())} corrected requests had a context "
            "(article) in their prompt, but the spec has no data.context_column to train it "
            "in; set data.context_column (e.g. 'article')"
        )
    else:
        rows = rows.drop(columns=CONTEXT)
    return rows.rename(columns=names).reset_index(drop=True)
