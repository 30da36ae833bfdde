"""Without a labelled set, the detector learns from altered twins of the validation targets:
each twin says something its input does not."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from attnops.models.generation.altered_twins import MAX_INPUTS, altered_twins
from attnops.models.generation.data import CONTEXT, SOURCE, TARGET
from attnops.models.generation.detector_fit import KIND, LABEL
from attnops.models.text_files import DataError

ITEMS = ["jacket", "lamp", "kettle", "backpack", "blender", "mirror"]
ROWS = pd.DataFrame(
    {
        SOURCE: [f"Where is my {ITEMS[i % 6]}, order {1000 + i}?" for i in range(12)],
        CONTEXT: [f"Express parcels arrive within {i % 3 + 1} days." for i in range(12)],
        TARGET: [
            f"Your {ITEMS[i % 6]} (order {1000 + i}) arrives within {i % 3 + 1} days."
            for i in range(12)
        ],
    }
)


def test_every_target_gets_a_twin_that_its_input_does_not_back():
    twins = altered_twins(ROWS, seed=0)
    assert len(twins) == 24 and twins[LABEL].tolist() == [0, 1] * 12
    faithful, altered = twins[twins[LABEL] == 0], twins[twins[LABEL] == 1]
    assert faithful[TARGET].tolist() == ROWS[TARGET].tolist()
    assert set(altered[KIND]) == {"number_swap", "word_swap", "added_sentence"}
    for row in altered.itertuples(index=False):
        given = f"{getattr(row, SOURCE)} {getattr(row, CONTEXT)}"
        twin, original = getattr(row, TARGET), ROWS.loc[ROWS[SOURCE] == row.source, TARGET].item()
        assert twin != original
        if row.kind == "number_swap":  # a number the input does not hold
            new = set(re.findall(r"\d+", twin)) - set(re.findall(r"\d+", original))
            assert new and not any(n in given for n in new)
        elif row.kind == "word_swap":  # a word the input does not hold
            new = set(twin.split()) - set(original.split())
            assert new and not any(w.strip(".,?").lower() in given.lower() for w in new)
        else:  # a sentence of another target appended
            assert twin.startswith(original) and len(twin) > len(original)
    assert altered_twins(ROWS, seed=0).equals(twins)


def test_at_most_max_inputs_rows_and_a_clear_error_below_the_minimum():
    many = pd.concat([ROWS] * 30, ignore_index=True)
    many[TARGET] = [f"{t} Ref {i}." for i, t in enumerate(many[TARGET])]
    assert len(altered_twins(many, seed=0)) == 2 * MAX_INPUTS
    with pytest.raises(DataError, match=r"validation has 5 distinct targets.*hallucination_set"):
        altered_twins(ROWS.head(5), seed=0)
