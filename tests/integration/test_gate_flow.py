"""The `gate` flow and `attnops gate` on real registered versions (real MLflow, real Prefect)."""

from __future__ import annotations

import json
import re

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from attnops.flows.cli import main
from attnops.flows.gate import gate
from attnops.flows.train import train
from attnops.models import registry
from attnops.settings import Settings
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.usefixtures("prefect_server")

# Tiny random models score low: these tests are about the decision's plumbing, so the
# quality, calibration and hallucination limits are opened up (the baseline is still fitted
# and compared: a margin of -1 lets any candidate pass).
LENIENT = {
    "min_macro_f1": 0.0,
    "max_ece": 1.0,
    "max_unsupported_assertion_rate": 1.0,
    "min_baseline_margin": -1.0,
}


def _spec(demo_dir, write_spec, name="spec.yaml", **gate):
    spec = tiny_spec_dict(demo_dir, epochs=2)
    spec["gate"] = {**LENIENT, **gate}
    spec["monitoring"] = {"window_size": 50, "bootstrap_resamples": 200}
    return str(write_spec(spec, name))


def _client() -> MlflowClient:
    return registry.client_for(Settings.from_env())


def test_first_version_is_gated_on_absolute_limits_and_the_evidence_lands_on_it(
    attnops_home, demo_dir, write_spec, capsys
):
    path = _spec(demo_dir, write_spec)
    train(path)
    assert main(["gate", "--spec", path]) == 0
    out = capsys.readouterr().out
    assert "gate passed for tiny-tickets v1 (no champion)" in out
    assert "quality_floor" in out and "mlflow ui" in out

    client = _client()
    version = client.get_model_version("tiny-tickets", "1")
    assert version.tags["attnops.gate"] == "passed"
    assert version.tags["attnops.gate_reasons"].startswith("all ")
    assert "## Gate: passed (vs absolute limits)" in version.description.split("\n")[1]
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "gate")}
    assert {"gate/gate.json", "gate/gate.md", "gate/classification.html"} <= artifacts
    decision = json.loads(mlflow.artifacts.load_text(f"runs:/{version.run_id}/gate/gate.json"))
    assert decision["passed"] and decision["champion"] is None
    baseline = next(c for c in decision["checks"] if c["name"] == "quality_vs_baseline")
    assert 0 < baseline["values"]["baseline_macro_f1"] <= 1 and baseline["values"]["n"] > 0


def test_a_two_class_version_gets_a_verdict(attnops_home, demo_dir, tmp_path, write_spec):
    """Sentiment, spam, churn: Evidently reads two classes as a binary task, which once made
    every two-class gate stop without a verdict (KeyError: 1)."""
    for split in ("train", "validation", "test"):
        frame = pd.read_csv(demo_dir / f"{split}.csv")
        two = frame[frame["intent"].isin(["refund_request", "account_locked"])]
        two.assign(intent=(two["intent"] == "refund_request").astype(int)).to_csv(
            tmp_path / f"{split}.csv", index=False
        )
    spec = tiny_spec_dict(tmp_path, epochs=2)
    spec["gate"] = LENIENT
    path = str(write_spec(spec))
    train(path)
    assert main(["gate", "--spec", path]) == 0
    version = _client().get_model_version("tiny-tickets", "1")
    assert version.tags["attnops.gate"] == "passed"
    assert "gate/classification.html" in {
        a.path for a in _client().list_artifacts(version.run_id, "gate")
    }


def test_same_recipe_retrained_is_no_different_from_the_champion(
    attnops_home, demo_dir, write_spec
):
    """Deterministic training: v2 equals v1, so the paired test finds no difference."""
    path = _spec(demo_dir, write_spec)
    train(path)
    _client().set_registered_model_alias("tiny-tickets", "champion", "1")
    train(path)
    decision = gate(path)
    assert decision.candidate == "2" and decision.champion == "1"
    assert decision.verdict == "no_difference"
    assert decision.passed, decision.reasons()
    version = _client().get_model_version("tiny-tickets", "2")
    assert version.tags["attnops.gate_champion"] == "1"
    artifacts = {a.path for a in _client().list_artifacts(version.run_id, "gate")}
    assert "gate/drift.html" in artifacts


def test_failed_gate_exits_non_zero_and_tags_the_reason(attnops_home, demo_dir, write_spec, capsys):
    path = _spec(demo_dir, write_spec, min_macro_f1=0.99, min_baseline_margin=0.0)
    version = train(path)
    # A model card that leaks an address must fail the gate too.
    client = _client()
    card = mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md")
    client.log_text(version.run_id, card + "\nQuestions: ann.lee@example.com\n", "model_card.md")
    assert main(["gate", "--spec", path]) == 1
    err = capsys.readouterr().err
    assert "attnops gate: failed: quality_floor: macro-F1" in err
    tags = client.get_model_version("tiny-tickets", "1").tags
    assert tags["attnops.gate"] == "failed"
    assert "quality_floor" in tags["attnops.gate_reasons"]
    assert "pii: PII in model_card.md: EMAIL_ADDRESS x1" in tags["attnops.gate_reasons"]
    # A random tiny model is far below bag-of-words on the same inputs.
    assert re.search(
        r"quality_vs_baseline: loses to the TF-IDF baseline: macro-F1 0\.\d{4} vs TF-IDF "
        r"baseline 0\.\d{4}",
        tags["attnops.gate_reasons"],
    )
    # Release says why it refuses: the gate ran and failed, with its reasons.
    assert main(["release", "--spec", path]) == 1
    assert "v1 failed the gate (quality_floor: macro-F1" in capsys.readouterr().err


def test_narrower_candidate_is_blocked_naming_the_lost_classes(
    attnops_home, demo_dir, write_spec, tmp_path
):
    """Champion on all demo intents, challenger on the same data less two intents in every
    split: a blocked verdict on the version naming them, judged on the champion's test data."""
    full = _spec(demo_dir, write_spec)
    train(full)
    _client().set_registered_model_alias("tiny-tickets", "champion", "1")
    lost = ["warranty_claim", "wrong_item"]
    narrow_dir = tmp_path / "narrow"
    narrow_dir.mkdir()
    for split in ("train", "validation", "test"):
        frame = pd.read_csv(demo_dir / f"{split}.csv", keep_default_na=False)
        frame[~frame["intent"].isin(lost)].to_csv(narrow_dir / f"{split}.csv", index=False)
    narrow = _spec(narrow_dir, write_spec, name="narrow.yaml")
    train(narrow)

    decision = gate(narrow)
    assert not decision.passed and decision.verdict == "not_comparable"
    tags = _client().get_model_version("tiny-tickets", "2").tags
    assert tags["attnops.gate"] == "failed"
    reasons = tags["attnops.gate_reasons"]
    assert re.search(
        r"lost_classes: cannot predict 2 of the champion's 20 classes: "
        r"warranty_claim \(champion accuracy \d\.\d{3}, n=\d+\), "
        r"wrong_item \(champion accuracy \d\.\d{3}, n=\d+\); candidate accuracy \d\.\d{3} vs "
        r"champion \d\.\d{3} on all \d+ of the champion's test inputs",
        reasons,
    ), reasons
    champion_test = pd.read_csv(demo_dir / "test.csv", keep_default_na=False)
    run_id = _client().get_model_version("tiny-tickets", "2").run_id
    recorded = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/gate/gate.json"))
    check = next(c for c in recorded["checks"] if c["name"] == "lost_classes")
    for name in lost:
        assert check["values"]["lost"][name]["n"] == (champion_test["intent"] == name).sum()
    assert "lost_classes" in _client().get_model_version("tiny-tickets", "2").description


def test_tampered_tokenizer_is_refused_before_any_decision(attnops_home, demo_dir, write_spec):
    path = _spec(demo_dir, write_spec)
    train(path)
    client = _client()
    client.set_model_version_tag("tiny-tickets", "1", "attnops.tokenizer_sha256", "0" * 64)
    with pytest.raises(ValueError, match="does not match its tag"):
        gate(path)
    assert "attnops.gate" not in client.get_model_version("tiny-tickets", "1").tags


def test_gate_without_a_challenger_says_what_to_run(attnops_home, demo_dir, write_spec):
    path = _spec(demo_dir, write_spec)
    with pytest.raises(LookupError, match="run `attnops train` first"):
        gate(path)
