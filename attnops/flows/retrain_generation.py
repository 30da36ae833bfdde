"""The `retrain` flow's data for `task: generation` versions (see `flows.retrain`).

The new labels of a generative version are corrected replies (reference outputs joined to
logged requests); `models.generation.corrections` turns them into training rows. The
training split becomes the spec's (or a replayed sample of it) plus most of those rows;
validation becomes the spec's plus the rest of them (`HELD_OUT_CORRECTIONS`): early stopping
watches validation loss, and a validation split without corrections would keep the
checkpoint that best preserves the old behaviour (measured: the demo's v2 stopped after 8
of 14 steps, at a validation loss below v1's, and still answered the corrected tickets the
old way). The test split stays the spec's, so the gate judges the new version on the
champion's inputs.
"""

from __future__ import annotations

import math

import pandas as pd

from attnops.models.generation.corrections import NoCorrectionsError, training_rows
from attnops.models.generation.data import CONTEXT, SOURCE, TARGET, load_generation_data
from attnops.settings import Settings
from attnops.spec import PipelineSpec

LIVE_SLICE = "live"
"""Slice value of the rows that came from the log (their slice is unknown)."""
HELD_OUT_CORRECTIONS = 0.25
"""Share of the corrected replies (seeded, at least one when there are two) moved to validation."""


def corrections_since(spec: PipelineSpec, settings: Settings, since_ts: float) -> pd.DataFrame:
    """Training rows from the requests logged since `since_ts` that have a reference output
    (empty when none has)."""
    from attnops.serving.generation_log_reader import GenerationLogReader

    window = GenerationLogReader(settings.inference_db).window(since_ts=since_ts)
    try:
        return training_rows(window, spec.data)
    except NoCorrectionsError:
        return pd.DataFrame()


def generation_splits(
    spec: PipelineSpec, spec_path: str, corrections: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """The retrain's splits in the spec's column names: train = the original rows (all, or
    `retrain.replay_examples` of them, seeded) + most of `corrections`; validation = the
    original rows + the rest of them (`HELD_OUT_CORRECTIONS`); test as it is. The training
    corrections appear `retrain.repeat_new_labels` times each.
    """
    data = load_generation_data(spec.data, spec_path)
    names = {SOURCE: spec.data.source_column, TARGET: spec.data.target_column}
    if spec.data.context_column:
        names[CONTEXT] = spec.data.context_column
    splits = {
        name: frame.rename(columns=names)[[*names.values(), *spec.data.slice_columns]]
        for name, frame in data.splits.items()
    }
    old = splits["train"]
    replay = spec.retrain.replay_examples
    if replay is not None and replay < len(old):
        old = old.sample(n=replay, random_state=spec.training.seed)
    new = corrections.assign(**dict.fromkeys(spec.data.slice_columns, LIVE_SLICE))
    n_held = math.ceil(HELD_OUT_CORRECTIONS * len(new)) if len(new) >= 2 else 0
    held = new.sample(n=n_held, random_state=spec.training.seed)
    new = new.drop(held.index)
    repeat = spec.retrain.repeat_new_labels
    print(
        f"retrain data: {len(old)} original rows + {len(new)} corrected replies"
        + (f" x {repeat}" if repeat > 1 else "")
        + f"; validation: {len(splits['validation'])} original rows + {len(held)} corrected "
        "replies"
    )
    new = pd.concat([new] * repeat, ignore_index=True)
    return splits | {
        "train": pd.concat([old, new], ignore_index=True),
        "validation": pd.concat([splits["validation"], held], ignore_index=True),
    }
