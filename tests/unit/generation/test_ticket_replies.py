"""Behaviour of the ticket-reply demo generator that training and the hallucination detector
rely on: seeded, grounded gold replies, a balanced labelled set on held-out tickets whose
altered twins break grounding, atomic files.

Uses the real packaged MiniLM sentence encoder (loaded once for the module).
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from attnops.demo import ticket_replies as tr
from attnops.demo.phrases import PRODUCTS
from attnops.models.groundedness import score_groundedness
from attnops.models.sentence_encoder import SentenceEncoder

SIZES = {"n_train": 120, "n_validation": 20, "n_test": 20, "n_labelled": 140}
# Kinds that put a number, date, name or contact into the reply that its input lacks.
FACT_KINDS = ("number_swap", "date_swap", "product_swap", "invented_contact")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pd.DataFrame]:
    paths = tr.write_ticket_replies(tmp_path_factory.mktemp("tr"), seed=3, **SIZES)
    return {name: pd.read_json(path, lines=True) for name, path in paths.items()}


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.cached()


def _score(encoder, frame: pd.DataFrame):
    sources = (frame["ticket"] + "\n\n" + frame["article"]).tolist()
    return score_groundedness(sources, frame["reply"].tolist(), encoder=encoder)


def test_same_seed_same_files_other_seed_other_rows(tmp_path):
    """A seed fixes every file byte for byte; another seed gives other tickets."""
    sizes = {"n_train": 30, "n_validation": 5, "n_test": 5, "n_labelled": 14}
    a = tr.write_ticket_replies(tmp_path / "a", seed=1, **sizes)
    b = tr.write_ticket_replies(tmp_path / "b", seed=1, **sizes)
    c = tr.write_ticket_replies(tmp_path / "c", seed=2, **sizes)
    assert set(a) == {"train", "validation", "test", "hallucination"}
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)
    assert a["train"].read_bytes() != c["train"].read_bytes()


def test_splits_have_the_columns_sizes_and_all_intents(files):
    for name, n in (("train", 120), ("validation", 20), ("test", 20)):
        assert list(files[name].columns) == list(tr.SPLIT_COLUMNS)
        assert len(files[name]) == n
    train = files["train"]
    assert set(train["intent"]) == set(tr.INTENTS)
    assert (train["article"] == train["intent"].map(tr.article)).all()
    # Short targets a 135M model can learn on a CPU: 1-3 sentences, ~15-50 words.
    words = train["reply"].str.split().str.len()
    assert words.between(10, 55).all(), train["reply"][~words.between(10, 55)].tolist()
    assert train["reply"].nunique() > 0.9 * len(train)


def test_no_ticket_repeats_across_files(files):
    tickets = [t for frame in files.values() for t in frame["ticket"].drop_duplicates()]
    assert len(tickets) == len(set(tickets))
    held_out = set(files["hallucination"]["ticket"])
    assert not held_out & set(files["train"]["ticket"])


def test_gold_replies_state_only_facts_of_their_ticket_and_article(files, encoder):
    """Every number, date, name and negation of a gold reply is supported by its input."""
    results = _score(encoder, files["train"])
    bad = [
        (r.n_unsupported_facts, reply)
        for r, reply in zip(results, files["train"]["reply"], strict=True)
    ]
    assert [b for b in bad if b[0]] == []
    assert sum(r.score >= 0.5 for r in results) >= 0.9 * len(results)
    # The ticket's own facts (order number, product) come back exactly as the ticket has them.
    for row in files["train"].itertuples():
        assert set(re.findall(r"#\d+", row.reply)) <= set(re.findall(r"#\d+", row.ticket))
        products = {p.lower() for p in PRODUCTS if p.lower() in row.reply.lower()}
        assert all(p in row.ticket.lower() for p in products), row


def test_labelled_set_is_balanced_paired_and_covers_every_kind(files):
    lab = files["hallucination"]
    assert list(lab.columns) == list(tr.LABELLED_COLUMNS)
    assert (lab["label"] == 1).sum() == (lab["label"] == 0).sum() == 70
    assert set(lab.loc[lab["label"] == 1, "kind"]) == set(tr.KINDS)
    assert set(lab.loc[lab["label"] == 0, "kind"]) == {tr.FAITHFUL}
    counts = lab.loc[lab["label"] == 1, "kind"].value_counts()
    assert counts.max() - counts.min() <= 1
    for _, pair in lab.groupby("pair"):
        faithful, twin = pair.sort_values("label")["reply"]
        assert len(pair) == 2 and pair["ticket"].nunique() == 1 and faithful != twin


def test_fact_altering_twins_fail_groundedness_their_faithful_replies_pass(files, encoder):
    lab = files["hallucination"]
    results = _score(encoder, lab)
    facts = pd.Series([r.n_unsupported_facts for r in results], index=lab.index)
    assert (facts[lab["label"] == 0] == 0).all()
    assert (facts[lab["kind"].isin(FACT_KINDS)] > 0).all()


def test_policy_term_swap_uses_another_term_of_the_same_article(files):
    """The hard kind: the swapped-in value is a real term of the article, not a new number."""
    lab = files["hallucination"]
    for _, pair in lab[
        lab["pair"].isin(lab.loc[lab["kind"] == "policy_term_swap", "pair"])
    ].groupby("pair"):
        faithful, twin = pair.sort_values("label")["reply"]
        terms = tr.POLICIES[pair["intent"].iloc[0]].terms.values()
        swaps = {
            faithful.replace(a, b, 1) for a in terms for b in terms if a != b and a in faithful
        }
        assert twin in swaps


def test_writes_are_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous file whole and no temp file behind."""
    sizes = {"n_train": 10, "n_validation": 4, "n_test": 4, "n_labelled": 14}
    paths = tr.write_ticket_replies(tmp_path, seed=0, **sizes)
    before = {k: p.read_bytes() for k, p in paths.items()}
    calls = {"n": 0}
    real_dumps = json.dumps

    def failing_dumps(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr(tr.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="disk full"):
        tr.write_ticket_replies(tmp_path, seed=9, **sizes)
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


def test_bad_sizes_are_rejected_with_the_values(tmp_path):
    with pytest.raises(ValueError, match="n_labelled even"):
        tr.write_ticket_replies(tmp_path, n_labelled=3)
    with pytest.raises(ValueError, match="'n_train': -1"):
        tr.write_ticket_replies(tmp_path, n_train=-1)
