"""Groundedness of generated text: faithful outputs pass, changed facts and invented text do not.

Uses the real packaged MiniLM sentence encoder (loaded once for the module).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnops.models.groundedness import (
    groundedness_descriptor,
    groundedness_summary,
    score_groundedness,
    split_sentences,
)
from attnops.models.sentence_encoder import SentenceEncoder

os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")

SOURCE = (
    "Hello,\n\nI ordered the TrailLite backpack on March 3 and paid $1,200 for the whole order "
    "of 40 units. The zipper broke two weeks ago, so 15% of the units are unusable. "
    "Shipping took 3.5 days. I don't want a replacement, I want a refund.\n\nKind regards,\nQuinn"
)
FAITHFUL = (
    "The customer ordered the TrailLite backpack on March 3 and paid $1200 for 40 units. "
    "The zipper broke 2 weeks ago and 15 percent of the units are unusable. "
    "They don't want a replacement."
)


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.cached()


def _score(encoder, output: str, source: str = SOURCE):
    return score_groundedness([source], [output], encoder=encoder)[0]


def test_encoder_returns_unit_rows_in_input_order(encoder):
    """Embeddings are unit-norm, keep input order across batches, and put paraphrases close."""
    sentences = ["Where is my parcel?", "The weather is lovely today.", "Where's my package?"]
    emb = encoder.encode(sentences, batch_size=2)
    assert emb.shape == (3, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[1], encoder.encode([sentences[1]])[0], atol=1e-5)
    assert emb[0] @ emb[2] > emb[0] @ emb[1] + 0.3
    assert SentenceEncoder.cached() is encoder


def test_split_sentences_breaks_on_punctuation_and_lines():
    assert split_sentences("Hi,\n\nIt broke. Can you help? Thanks!") == [
        "Hi,",
        "It broke.",
        "Can you help?",
        "Thanks!",
    ]


def test_faithful_paraphrase_scores_high(encoder):
    """Reworded extract with reformatted numbers (1,200 -> 1200, two -> 2, 15% -> 15 percent)."""
    result = _score(encoder, FAITHFUL)
    assert result.n_unsupported_facts == 0, result
    assert not result.unsupported_sentences
    assert result.score >= 0.6


def test_verbatim_extract_scores_near_one(encoder):
    result = _score(encoder, "Shipping took 3.5 days. The zipper broke two weeks ago.")
    assert result.score > 0.95
    assert result.novel_ngram_share == 0.0


@pytest.mark.parametrize(
    ("original", "changed", "flagged"),
    [
        ("$1200", "$1250", "1250"),
        ("$1200", "$1,300.00", "1300"),
        ("40 units", "45 units", "45"),
        ("March 3", "March 4", "4"),
        ("40 units", "15 units", "15"),  # the source has 15%, not 15
        ("15 percent", "18%", "18%"),
        ("15 percent", "15", "15"),  # 15% of the units is not 15 of them
    ],
)
def test_changed_number_is_flagged(encoder, original, changed, flagged):
    """One changed number (any format, even one the source uses elsewhere) is caught."""
    result = _score(encoder, FAITHFUL.replace(original, changed))
    assert flagged in result.unsupported_numbers
    assert result.score < 0.5


def test_changed_decimal_is_flagged(encoder):
    result = _score(encoder, "Shipping took 3.8 days.")
    assert result.unsupported_numbers == ("3.8",)
    assert result.score < 0.5


@pytest.mark.parametrize(
    ("original", "changed", "flagged"),
    [("March 3", "March 5", "march 5"), ("2 weeks ago", "three weeks ago", "3 weeks ago")],
)
def test_changed_date_is_flagged(encoder, original, changed, flagged):
    result = _score(encoder, FAITHFUL.replace(original, changed))
    assert flagged in result.unsupported_dates
    assert result.score < 0.5


def test_invented_product_name_is_flagged(encoder):
    result = _score(encoder, FAITHFUL.replace("TrailLite backpack", "ZenBrew X200 kettle"))
    assert {"ZenBrew", "X200"} <= set(result.unsupported_names)
    assert result.score < 0.5


def test_flipped_negation_is_flagged(encoder):
    result = _score(encoder, "The customer wants a replacement.")
    dropped = _score(encoder, "I want a replacement.")
    added = _score(encoder, "Shipping did not take 3.5 days.")
    assert dropped.negation_mismatches and added.negation_mismatches
    assert max(dropped.score, added.score) < 0.5
    assert result.score < 0.5


def test_unrelated_output_scores_low(encoder):
    result = _score(encoder, "The new stadium opens next spring. Tickets go on sale online.")
    assert result.score < 0.2
    assert len(result.unsupported_sentences) == 2


def test_batch_scores_align_and_summary_is_flat(encoder):
    outputs = [FAITHFUL, FAITHFUL.replace("$1200", "$1250"), "", "Cats purr when content."]
    results = score_groundedness([SOURCE, SOURCE, SOURCE, SOURCE], outputs, encoder=encoder)
    assert results[0].score >= 0.6 and results[1].score < 0.5 and results[2].score == 1.0
    summary = groundedness_summary(results, threshold=0.5)
    assert summary == pytest.approx(
        {
            "hallucination_rate": 0.5,
            "groundedness_mean": np.mean([r.score for r in results]),
            "unsupported_number_rate": 0.25,
            "n_outputs": 4.0,
        }
    )
    assert all(type(v) is float for v in summary.values())
    with pytest.raises(ValueError, match="2 sources but 1 outputs"):
        score_groundedness([SOURCE, SOURCE], [FAITHFUL], encoder=encoder)


def test_evidently_descriptor_adds_column_and_report_runs(encoder, tmp_path):
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue, MinValue

    frame = pd.DataFrame(
        {
            "source": [SOURCE] * 3,
            "summary": [FAITHFUL, FAITHFUL.replace("$1200", "$1250"), "Cats purr when content."],
        }
    )
    dataset = Dataset.from_pandas(
        frame,
        data_definition=DataDefinition(text_columns=["source", "summary"]),
        descriptors=[groundedness_descriptor("source", "summary", encoder=encoder)],
    )
    scores = dataset.as_dataframe()["groundedness"].to_numpy()
    expected = [r.score for r in score_groundedness(frame.source, frame.summary, encoder=encoder)]
    np.testing.assert_allclose(scores, expected)
    assert scores[0] >= 0.6 > 0.5 > scores[1]

    snapshot = Report([MeanValue(column="groundedness"), MinValue(column="groundedness")]).run(
        dataset, None
    )
    values = [m["value"] for m in snapshot.dict()["metrics"]]
    assert values == pytest.approx([scores.mean(), scores.min()])
    html = tmp_path / "groundedness.html"
    snapshot.save_html(str(html))
    assert html.stat().st_size > 10_000

    with pytest.raises(ValueError, match="needs column"):
        Dataset.from_pandas(frame, descriptors=[groundedness_descriptor("source", "answer")])


def test_benchmark_separates_altered_outputs(encoder):
    """A small run of benchmarks/groundedness_auc.py: AUC floor, every changed number caught."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "groundedness_auc.py"
    spec = importlib.util.spec_from_file_location("groundedness_auc", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pairs = bench.build_pairs(60, seed=7)
    assert len(pairs) == 60 and (pairs.kind == "number").sum() >= 5
    metrics = bench.evaluate(pairs, threshold=0.5, encoder=encoder)
    assert metrics["roc_auc"] >= 0.85, metrics
    assert metrics["number_catch_rate"] == 1.0, metrics
