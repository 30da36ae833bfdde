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
    twins = altered_twins(ROWS, seed=0, fit_share=0.5)
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
    assert altered_twins(ROWS, seed=0, fit_share=0.5).equals(twins)


def test_at_most_max_inputs_and_a_clear_error_below_what_the_fit_and_its_check_need():
    many = pd.concat([ROWS] * 30, ignore_index=True)
    many[SOURCE] = [f"{t} Ref {i}." for i, t in enumerate(many[SOURCE])]
    assert len(altered_twins(many, seed=0, fit_share=0.5)) == 2 * MAX_INPUTS
    # Ten references of five tickets: five inputs, not ten, to split into fit and held out.
    five = pd.concat([ROWS.head(5)] * 2, ignore_index=True)
    five[TARGET] = [f"{t} (reference {i // 5})" for i, t in enumerate(five[TARGET])]
    with pytest.raises(DataError, match=r"validation has 5 distinct inputs.*hallucination_set"):
        altered_twins(five, seed=0, fit_share=0.5)
    with pytest.raises(DataError, match=r"detector_fit_share 0.8"):
        altered_twins(ROWS, seed=0, fit_share=0.8)  # 10 fit, 2 held out


def test_an_added_sentence_says_something_the_input_does_not():
    """FAQ replies quote their shared article: appending one of them adds nothing new."""
    article = "Returns are free within 30 days. Refunds reach your card within 5 days."
    rows = pd.DataFrame(
        {
            SOURCE: [f"Question {i}: can I return it?" for i in range(12)],
            CONTEXT: [article] * 12,
            TARGET: ["Returns are free within 30 days."] * 6
            + ["Refunds reach your card within 5 days."] * 5
            + ["Our Lisbon warehouse ships parcels every Tuesday."],
        }
    )
    twins = altered_twins(rows, seed=0, fit_share=0.5)
    added = twins[twins[KIND] == "added_sentence"]
    # Only the Lisbon sentence is news to the article; its own row has nothing to add.
    assert len(added) == 3 and added[TARGET].str.endswith("every Tuesday.").all()
    assert len(twins) == 2 * 11 and "Lisbon" not in twins[twins[LABEL] == 0][TARGET].iloc[-1]


def test_a_swapped_number_is_one_the_input_does_not_state_in_any_digits():
    rows = pd.DataFrame(
        {
            SOURCE: [f"返金はいつですか？ 注文{i}" for i in range(36)],
            CONTEXT: ["返金は５営業日以内、交換は６営業日以内です。"] * 36,
            TARGET: ["返金は３営業日以内に届きます。"] * 36,
        }
    )
    for seed in range(20):
        twins = altered_twins(rows, seed=seed, fit_share=0.5)
        swapped = twins[twins[KIND] == "number_swap"]
        assert len(swapped)
        for row in swapped.itertuples(index=False):
            written = re.fullmatch(r"返金は([０-９]+)営業日以内に届きます。", row.target)
            stated = {5, 6, int(row.source.split("注文")[1])}
            assert written and int(written.group(1)) not in stated, row.target


def test_a_digit_run_too_long_for_a_number_is_left_alone():
    rows = ROWS.assign(**{TARGET: [f"{t} Ref {'9' * 5000}." for t in ROWS[TARGET]]})
    twins = altered_twins(rows, seed=0, fit_share=0.5)
    assert twins[twins[KIND] == "number_swap"][TARGET].str.contains("9" * 5000).all()


def test_one_word_answers_get_no_twins_and_the_error_says_a_labelled_set_is_needed():
    rows = pd.DataFrame(
        {
            SOURCE: [f"Is order {1000 + i} shipped?" for i in range(20)],
            CONTEXT: [""] * 20,
            TARGET: ["Yes", "No"] * 10,
        }
    )
    with pytest.raises(DataError, match=r"20 of its 20 targets could not be altered.*one-word"):
        altered_twins(rows, seed=0, fit_share=0.5, split="qa.csv (validation: 0.1 of it set aside)")
