"""benchmarks/ood_layers.py: its per-layer views agree with what evaluation scores, its
validation-fitted combination and the intents it recovers for the held-out check."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attnops.models.batching import encode
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier
from attnops.spec import ModelSpec
from tests.conftest import TINY_BERT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    # As when run as a script: its own folder first on the path (it imports ood_scores).
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "ood_layers", REPO / "benchmarks/ood_layers.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_layer_views_match_what_evaluation_scores(bench, tokenizer):
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(config_overrides=TINY_BERT), ("a", "b", "c")).eval()
    texts = ["card not arrived", "how do I top up", "pin blocked again today", "hi"]
    views = bench.layer_features(model, tokenizer, texts, 32, torch.device("cpu"))
    layers = model.config.num_hidden_layers
    per_layer = [(f"mean-pooled layer {i}", f"[CLS] layer {i}") for i in range(1, layers + 1)]
    assert list(views) == [bench.OUTPUT_INPUT, "mean-pooled layer 0"] + [
        name for pair in per_layer for name in pair
    ]
    pred = predict(
        model, encode(tokenizer, texts, 32), pad_id=tokenizer.pad_token_id,
        device=torch.device("cpu"), with_embeddings=True,
    )  # fmt: skip
    # The output layer's input is what the shipped Mahalanobis reads; the last layer's
    # mean-pooled state is the records' embedding: same rows, same order.
    np.testing.assert_allclose(views[bench.OUTPUT_INPUT], pred.features, atol=1e-6)
    np.testing.assert_allclose(views[f"mean-pooled layer {layers}"], pred.embeddings, atol=1e-6)


def test_combination_is_fitted_and_thresholded_on_validation_only(bench):
    rng = np.random.default_rng(0)
    out_val = np.arange(300) < 60
    out_test = np.arange(200) < 50
    # Column 0 separates out-of-scope rows by 4 standard deviations, column 1 is noise.
    val = np.column_stack([rng.normal(size=300) + 4.0 * out_val, rng.normal(size=300)])
    test = np.column_stack([rng.normal(size=200) + 4.0 * out_test, rng.normal(size=200)])
    scores, threshold, figures, c = bench.combine(val, out_val, test, 0.05, seed=0)
    assert c in bench.C_GRID
    assert figures["in_scope_rejection"] <= 0.05  # out-of-fold in-scope validation scores
    assert figures["recall"] > 0.9
    assert ((scores > threshold)[out_test]).mean() > 0.9
    # Only validation decides: shuffling the test rows' out-of-scope marks changes nothing.
    again = bench.combine(val, out_val, test[rng.permutation(200)], 0.05, seed=0)
    assert again[1] == threshold and again[3] == c


def test_original_intents_reads_held_out_rows_back(bench):
    source = pd.DataFrame({"text": ["lost my phone", "new card"], "category": ["lost", "card"]})
    frame = pd.DataFrame({"text": ["lost my phone", "new card"], "label": ["oos", "card"]})
    assert bench.original_intents(frame, source, "oos").tolist() == ["lost", "card"]
    frame.loc[0, "text"] = "typed differently"
    with pytest.raises(SystemExit, match="1 out-of-scope texts are not in the --source files"):
        bench.original_intents(frame, source, "oos")
