"""Monitoring on the demo scenarios: 20 windows each, at the spec's window size.

A small BERT is fine-tuned on the demo tickets; its reference profile and every window
go through the same code the pipeline uses (records, PII redaction, calibrated checks with
their effect-size floors: a window alarms on a check both significant and material).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from attnops.demo.tickets import SCENARIOS, generate_tickets, write_demo_dataset
from attnops.models.batching import encode
from attnops.models.classifier import train_classifier
from attnops.models.data import load_labelled_data
from attnops.models.inference import predict
from attnops.models.metrics import out_of_scope_threshold
from attnops.models.profile import EmbeddingProjection
from attnops.models.records import score_records
from attnops.monitors.reference import ReferenceProfile, redact_records
from attnops.spec import MonitoringSpec, PipelineSpec
from tests.conftest import tiny_spec_dict

SEEDS = range(20)
WINDOW = MonitoringSpec().window_size
OOS_SHARE = 0.1  # as in the demo's splits


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenarios")
    write_demo_dataset(folder, seed=0, n_train=1200, n_validation=300, n_test=600)
    raw = tiny_spec_dict(folder, epochs=4, batch_size=32)
    raw["model"]["max_length"] = 128
    # The detection rates below were set on this model trained in fp32; bf16 autocast (the
    # default on CPUs with native bf16) trains a slightly different one, and label shift,
    # the subtlest scenario, then alarmed in 17 of 20 windows. The monitor is under test.
    raw["training"]["bf16"] = False
    spec = PipelineSpec.model_validate(raw)
    data = load_labelled_data(spec.data)
    trained = train_classifier(spec, data, progress=False)
    model, tokenizer, names = trained.model, trained.tokenizer, data.label_names
    val = data.splits["validation"]
    val_pred = predict(
        model,
        encode(tokenizer, val["text"].tolist(), 128),
        pad_id=tokenizer.pad_token_id,
        device=torch.device("cpu"),
        with_embeddings=True,
    )
    in_scope = val["label"].isin(names).to_numpy()
    projection = EmbeddingProjection.fit(val_pred.embeddings[in_scope], 32)

    def records(frame, seed):
        scored = score_records(
            model,
            tokenizer,
            frame["text"].tolist(),
            label_names=names,
            max_length=128,
            projection=projection,
            device=torch.device("cpu"),
            attention_share=0.2,
            seed=seed,
        )
        scored.insert(0, "text", frame["text"].to_numpy())
        return redact_records(scored)  # as the inference log stores them

    test = data.splits["test"]
    reference = records(test, seed=0).assign(label=test["label"].to_numpy())
    summary = {
        "out_of_scope_threshold": out_of_scope_threshold(val_pred.confidence[in_scope], 0.05),
        "out_of_scope_label": "out_of_scope",
    }
    profile = ReferenceProfile(reference, summary, MonitoringSpec())

    @functools.cache
    def window(scenario, seed, oos_share=OOS_SHARE):
        tickets = generate_tickets(
            WINDOW, seed=10_000 + seed, scenario=scenario, out_of_scope_share=oos_share
        )
        scored = records(tickets, seed)
        return scored, tickets["intent"].to_numpy()

    return profile, window


@pytest.mark.slow
def test_same_distribution_windows_alarm_at_most_one_in_ten(world, record_property):
    profile, window = world
    assessed = [profile.assess(window("normal", seed)[0]) for seed in SEEDS]
    alarms = [a for a in assessed if a.alarm]
    record_property("windows_alarmed", f"{len(alarms)}/{len(SEEDS)}")  # in --junitxml
    assert len(alarms) <= 2, [a.reasons() for a in alarms]


@pytest.mark.slow
def test_windows_of_only_trained_intents_are_a_real_but_immaterial_shift(world, record_property):
    """The reference holds 10% out-of-scope tickets; traffic without any differs from it
    (lower-confidence inputs gone) enough to be significant at times, not to matter."""
    profile, window = world
    assessed = [profile.assess(window("normal", 100 + seed, oos_share=0.0)[0]) for seed in SEEDS]
    alarms = [a for a in assessed if a.alarm]
    significant = sum(any(c.significant for c in a.drift.checks) for a in assessed)
    record_property("windows_alarmed", f"{len(alarms)}/{len(SEEDS)}")
    record_property("windows_significant", f"{significant}/{len(SEEDS)}")
    assert len(alarms) <= 2, [a.reasons() for a in alarms]
    assert all(a.severity != "high" for a in assessed)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "normal"])
def test_every_drift_scenario_is_detected_in_nine_windows_of_ten(world, scenario, record_property):
    profile, window = world
    detected = sum(profile.assess(window(scenario, seed)[0]).alarm for seed in SEEDS)
    record_property("windows_detected", f"{detected}/{len(SEEDS)}")
    assert detected >= 18, f"{scenario}: detected in {detected} of {len(SEEDS)} windows"


@pytest.mark.slow
def test_label_free_estimate_brackets_the_true_accuracy(world, record_property):
    profile, window = world
    inside, errors = 0, []
    for seed in SEEDS:
        records, intents = window("normal", seed)
        estimate = profile.assess(records).estimate
        actual = float((records["prediction"].to_numpy() == intents).mean())
        inside += estimate.accuracy_low <= actual <= estimate.accuracy_high
        errors.append(abs(estimate.accuracy - actual))
    record_property("bounds_held", f"{inside}/{len(SEEDS)}")
    record_property("mean_abs_error", f"{np.mean(errors):.3f}")
    # All windows are judged against one reference sample, so their misses are correlated:
    # a reference a little off in one direction shifts every estimate alike.
    assert inside >= 16, f"bounds held in {inside} of {len(SEEDS)} windows"
    assert np.mean(errors) < 0.05
