"""Corrected replies become training rows: only those with a reference, one per prompt
(the newest correction wins), in the spec's column names, and a clear error otherwise."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from attnops.models.generation.corrections import NoCorrectionsError, training_rows
from attnops.spec import DataSpec

DATA = DataSpec(
    train="t.jsonl",
    validation="v.jsonl",
    test="s.jsonl",
    source_column="ticket",
    target_column="reply",
    context_column="article",
)


def log_window(rows: list[tuple]) -> pd.DataFrame:
    """(source, context, output, reference) rows, oldest first, as the log reader returns."""
    return pd.DataFrame(rows, columns=["source", "context", "output", "reference"]).assign(
        request_id=lambda f: [f"r{i}" for i in range(len(f))], status=200
    )


def test_rows_with_a_reference_become_training_rows_in_the_spec_columns():
    window = log_window(
        [
            ("Refund?", "Refunds take 5 days.", "Refunds take 9 days.", "Refunds take 5 days."),
            ("Where is it?", "Orders ship in 2 days.", "It ships in 2 days.", None),
            ("Password?", "", "Click reset.", "   "),
            ("Plan price?", "Pro costs $20.", "Pro costs $15.", "The Pro plan costs $20."),
        ]
    )
    rows = training_rows(window, DATA)
    assert list(rows.columns) == ["ticket", "article", "reply"]
    assert rows.to_dict("records") == [
        {"ticket": "Refund?", "article": "Refunds take 5 days.", "reply": "Refunds take 5 days."},
        {"ticket": "Plan price?", "article": "Pro costs $20.", "reply": "The Pro plan costs $20."},
    ]


def test_a_prompt_corrected_twice_trains_once_on_its_newest_reference():
    window = log_window(
        [
            ("Refund?", "Refunds take 5 days.", "9 days.", "Refunds take 5 days."),
            ("Refund?", "Refunds take 5 days.", "7 days.", "Refunds take 5 days."),
            ("Refund?", "Refunds take 3 days.", "5 days.", "Refunds now take 3 days."),
            ("Refund?", "Refunds take 3 days.", "5 days.", "Refunds take 3 working days."),
        ]
    )
    rows = training_rows(window, DATA)
    assert rows["reply"].tolist() == ["Refunds take 5 days.", "Refunds take 3 working days."]


def test_no_reference_at_all_is_an_error_that_says_how_to_add_them():
    window = log_window([("Refund?", "", "5 days.", None), ("Hi", "", "Hello.", "")])
    with pytest.raises(NoCorrectionsError, match=r"none of the 2 logged requests has a reference"):
        training_rows(window, DATA)
    with pytest.raises(ValueError, match=r"attnops labels"):
        training_rows(window.iloc[:0], DATA)


def test_a_window_without_the_needed_columns_is_named():
    window = log_window([("Refund?", "", "5 days.", "5 days.")]).drop(columns=["reference"])
    with pytest.raises(ValueError, match=r"no column 'reference' \(columns: source, context"):
        training_rows(window, DATA)


def test_articles_are_kept_or_refused_never_dropped_silently():
    no_context = DATA.model_copy(update={"context_column": None})
    plain = log_window([("Refund?", "", "9 days.", "5 days.")])
    assert training_rows(plain, no_context).to_dict("records") == [
        {"ticket": "Refund?", "reply": "5 days."}
    ]
    grounded = log_window([("Refund?", "Refunds take 5 days.", "9 days.", "5 days.")])
    with pytest.raises(ValueError, match=r"set data.context_column"):
        training_rows(grounded, no_context)


def test_the_retrain_validates_on_held_out_corrections_as_well_as_on_the_old_rows(tmp_path):
    """Early stopping must see the corrected behaviour: a quarter of the corrections (seeded)
    move to validation, never into train too; test stays the champion's."""
    import yaml

    from attnops.demo.ticket_replies import write_ticket_replies
    from attnops.flows.retrain_generation import generation_splits
    from attnops.spec import PipelineSpec

    paths = write_ticket_replies(tmp_path, n_train=20, n_validation=6, n_test=4, n_labelled=4)
    config = Path(__file__).parents[3] / "configs" / "ticket-replies.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["data"] |= {split: str(paths[split]) for split in ("train", "validation", "test")}
    raw["generation"]["hallucination_set"] = str(paths["hallucination"])
    raw["retrain"] |= {"replay_examples": 10, "repeat_new_labels": 1}
    spec = PipelineSpec.model_validate(raw)
    corrections = pd.DataFrame(
        {
            "ticket": [f"Ticket {i} about a withdrawn policy" for i in range(9)],
            "article": "",
            "reply": [f"Holding reply {i}." for i in range(9)],
        }
    )
    splits = generation_splits(spec, str(config), corrections)
    train, validation = splits["train"], splits["validation"]
    corrected = set(corrections["ticket"])
    assert len(train) == 10 + 6 and len(validation) == 6 + 3 and len(splits["test"]) == 4
    held = set(validation["ticket"]) & corrected
    assert len(held) == 3 and not held & set(train["ticket"])
    assert held | (set(train["ticket"]) & corrected) == corrected
    again = generation_splits(spec, str(config), corrections)["validation"]
    assert again.equals(validation)
    raw["retrain"]["repeat_new_labels"] = 3
    repeated = generation_splits(PipelineSpec.model_validate(raw), str(config), corrections)
    assert len(repeated["train"]) == 10 + 3 * 6 and repeated["validation"].equals(validation)
