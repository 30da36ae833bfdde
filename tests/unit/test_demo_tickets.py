"""Behaviour of the demo ticket generator that training and drift checks rely on."""

import re

import pandas as pd
import pandas.testing as pdt
import pytest

from attnops.demo.phrases import NEW_LINE_VOCAB
from attnops.demo.tickets import (
    INTENTS,
    OUT_OF_SCOPE,
    SCENARIOS,
    generate_tickets,
    write_demo_dataset,
    write_scenario,
)

COLUMNS = ["ticket_id", "text", "intent", "channel", "product", "has_pii", "scenario"]
CARD = re.compile(r"\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}\b")
EMAIL = re.compile(r"\b[\w.]+@[\w.]+\.\w+\b")


@pytest.fixture(scope="module")
def normal() -> pd.DataFrame:
    return generate_tickets(1200, seed=0)


def _words(df: pd.DataFrame) -> pd.Series:
    return df["text"].str.split().str.len()


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _luhn_ok(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits))
    return total % 10 == 0


def test_same_seed_gives_identical_frame_and_other_seed_differs():
    """Determinism: the demo data and drift windows are reproducible from the seed alone."""
    args = {"scenario": "style_shift", "out_of_scope_share": 0.1}
    first = generate_tickets(200, seed=7, **args)
    pdt.assert_frame_equal(first, generate_tickets(200, seed=7, **args))
    other = generate_tickets(200, seed=8, **args)
    assert (first["text"] != other["text"]).mean() > 0.9


def test_columns_dtypes_and_values(normal):
    """The frame has the documented columns, types and value sets."""
    assert list(normal.columns) == COLUMNS
    assert normal["has_pii"].dtype == bool
    assert normal["ticket_id"].is_unique
    assert all(isinstance(t, str) and t.strip() for t in normal["text"])
    assert set(normal["channel"]) == {"email", "chat", "app"}
    assert set(normal["intent"]) <= set(INTENTS)
    assert set(normal["scenario"]) == {"normal"}
    named = normal[normal["product"] != ""]
    assert len(named) > 0
    pairs = zip(named["product"].str.lower(), named["text"].str.lower(), strict=True)
    assert sum(p in t for p, t in pairs) / len(named) > 0.9  # the rest carry a typo


def test_intents_are_sorted_and_all_present_in_1200_rows(normal):
    """Every in-scope intent appears in a training-sized sample, so splits cover all labels."""
    assert list(INTENTS) == sorted(INTENTS) and len(INTENTS) >= 12
    assert set(normal["intent"]) == set(INTENTS)


def test_normal_tickets_have_realistic_lengths_and_channel_styles(normal):
    """Average ticket is 15-35 words, with short and long ones; email writes longer than chat."""
    words = _words(normal)
    assert 15 <= words.mean() <= 35
    assert (words <= 6).mean() > 0.05 and (words >= 40).mean() > 0.02
    by_channel = words.groupby(normal["channel"]).mean()
    assert by_channel["email"] > 1.5 * by_channel["chat"]


def test_out_of_scope_share_is_exact():
    """`out_of_scope_share` of the rows (rounded) are labelled OUT_OF_SCOPE."""
    df = generate_tickets(300, seed=1, out_of_scope_share=0.1)
    assert (df["intent"] == OUT_OF_SCOPE).sum() == 30
    assert not df.loc[df["intent"] == OUT_OF_SCOPE, "has_pii"].any()


def test_pii_flag_matches_text_and_cards_are_luhn_valid(normal):
    """has_pii marks exactly the tickets with an email/card; ~5% of normal traffic has PII."""
    assert 0.02 <= normal["has_pii"].mean() <= 0.1
    clean = normal.loc[~normal["has_pii"], "text"]
    assert not clean.str.contains(EMAIL).any() and not clean.str.contains(CARD).any()
    cards = [m for t in normal.loc[normal["has_pii"], "text"] for m in CARD.findall(t)]
    assert cards and all(_luhn_ok(c) for c in cards)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_demo_dataset_round_trips(tmp_path, fmt):
    """Splits are written, read back unchanged, and only validation/test hold OOS rows."""
    sizes = {"n_train": 120, "n_validation": 40, "n_test": 60}
    paths = write_demo_dataset(tmp_path, seed=3, fmt=fmt, **sizes)
    assert paths == {s: tmp_path / f"{s}.{fmt}" for s in ("train", "validation", "test")}
    read = pd.read_parquet if fmt == "parquet" else lambda p: pd.read_csv(p, keep_default_na=False)
    splits = {name: read(path) for name, path in paths.items()}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [120, 40, 60]
    assert (splits["train"]["intent"] == OUT_OF_SCOPE).sum() == 0
    assert (splits["validation"]["intent"] == OUT_OF_SCOPE).sum() == 4
    assert (splits["test"]["intent"] == OUT_OF_SCOPE).sum() == 6
    ids = [set(df["ticket_id"]) for df in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = write_demo_dataset(tmp_path / "again", seed=3, fmt=fmt, **sizes)
    for name, df in splits.items():
        assert list(df.columns) == COLUMNS and df["has_pii"].dtype == bool
        pdt.assert_frame_equal(df, read(again[name]))


def test_new_product_line_vocabulary_never_occurs_in_normal(normal):
    """new_product_line brings unseen terms (inverter, kWh, ...) with in-scope labels."""
    shifted = generate_tickets(300, seed=0, scenario="new_product_line")
    assert not any(_tokens(t) & NEW_LINE_VOCAB for t in normal["text"])
    assert sum(bool(_tokens(t) & NEW_LINE_VOCAB) for t in shifted["text"]) / len(shifted) >= 0.8
    assert set(shifted["intent"]) <= set(INTENTS)
    assert not set(shifted["product"]) & set(normal["product"]) - {""}


def test_long_messages_are_at_least_four_times_longer(normal):
    """long_messages: 150-300 word multi-paragraph tickets."""
    long = generate_tickets(200, seed=0, scenario="long_messages")
    assert _words(long).median() >= 4 * _words(normal).median()
    assert _words(long).between(150, 320).all()
    assert long["text"].str.contains("\n\n").mean() > 0.9


def test_style_shift_is_shouty_texting_or_legalese(normal):
    """style_shift: mostly ALL-CAPS texting with abbreviations and emojis, some legalese."""
    shifted = generate_tickets(300, seed=0, scenario="style_shift")

    def caps_share(df: pd.DataFrame) -> float:
        upper = df["text"].str.count(r"[A-Z]")
        letters = df["text"].str.count(r"[A-Za-z]").clip(lower=1)
        return float((upper / letters > 0.6).mean())

    assert caps_share(shifted) >= 0.5 and caps_share(normal) <= 0.05
    legalese = shifted["text"].str.contains("hereby|pursuant|undersigned", case=False)
    assert 0.05 <= legalese.mean() <= 0.4


def test_pii_surge_puts_pii_in_most_tickets():
    """pii_surge: at least 60% of tickets carry personal data."""
    assert generate_tickets(300, seed=0, scenario="pii_surge")["has_pii"].mean() >= 0.6


def test_label_shift_concentrates_on_three_intents(normal):
    """label_shift: the top three intents make up at least half of the rows."""
    top3 = generate_tickets(300, seed=0, scenario="label_shift")["intent"].value_counts()
    assert top3.head(3).sum() / 300 >= 0.5
    assert normal["intent"].value_counts().head(3).sum() / len(normal) < 0.35


def test_write_scenario_names_the_file_after_the_scenario(tmp_path):
    """A drift window is one labelled file named f"{scenario}.{fmt}"."""
    path = write_scenario(tmp_path, "pii_surge", n=50, seed=2)
    assert path == tmp_path / "pii_surge.parquet"
    pdt.assert_frame_equal(
        pd.read_parquet(path), generate_tickets(50, seed=2, scenario="pii_surge")
    )


def test_unknown_scenario_or_format_names_the_allowed_values(tmp_path):
    """Bad arguments fail with the bad value and the allowed ones in the message."""
    with pytest.raises(ValueError, match=r"'holiday'.*normal, new_product_line") as err:
        generate_tickets(10, seed=0, scenario="holiday")
    assert all(s in str(err.value) for s in SCENARIOS)
    with pytest.raises(ValueError, match=r"'xlsx'.*csv, parquet"):
        write_demo_dataset(tmp_path, fmt="xlsx")
    with pytest.raises(ValueError, match="'holiday'"):
        write_scenario(tmp_path, "holiday", n=10, seed=0)
    assert list(tmp_path.iterdir()) == []
