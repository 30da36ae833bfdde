"""Temperature scaling: recovers a known temperature and makes the model itself calibrated."""

import numpy as np
import pytest
import torch

from attnops.models.calibration import fit_temperature, fold_temperature
from attnops.models.metrics import expected_calibration_error
from attnops.models.modeling import build_classifier
from attnops.spec import ModelSpec
from tests.conftest import TINY_BERT


def test_fit_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(4000, 5))
    true_probs = torch.softmax(torch.tensor(logits / 2.5), dim=1).numpy()
    labels = np.array([rng.choice(5, p=p) for p in true_probs])
    overconfident = torch.softmax(torch.tensor(logits), dim=1).numpy()
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.5, rel=0.1)
    calibrated = torch.softmax(torch.tensor(logits / temperature), dim=1).numpy()
    ece = lambda p: expected_calibration_error(p.max(1), p.argmax(1) == labels, 10)[0]  # noqa: E731
    assert ece(calibrated) < ece(overconfident) / 3


def test_folding_divides_the_logits(tokenizer):
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(config_overrides=TINY_BERT), ("a", "b", "c")).eval()
    batch = tokenizer(["where is my order"], return_tensors="pt")
    before = model(**batch).logits
    fold_temperature(model, 4.0)
    torch.testing.assert_close(model(**batch).logits, before / 4.0)
