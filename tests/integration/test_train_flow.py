"""The train flow end to end: real Prefect server, real MLflow on SQLite, tiny BERT."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from attnops.flows.train import train
from attnops.models import registry
from attnops.models.data import load_labelled_data
from attnops.models.modeling import tokenizer_sha256
from attnops.settings import Settings
from attnops.spec import load_spec
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.usefixtures("prefect_server")


def _client() -> MlflowClient:
    return registry.client_for(Settings.from_env())


def test_train_registers_model_with_tokenizer_and_evidence(
    attnops_home, demo_dir, write_spec, tokenizer
):
    version = train(str(write_spec(tiny_spec_dict(demo_dir))))
    client = _client()

    assert version.version == "1"
    assert client.get_model_version_by_alias("tiny-tickets", "challenger").version == 1
    tags = client.get_model_version("tiny-tickets", "1").tags
    assert tags["attnops.tokenizer_sha256"] == tokenizer_sha256(tokenizer)
    assert len(tags["attnops.data_sha256"]) == 64
    assert tags["attnops.git_sha"]
    assert tags["attnops.version.torch"] != "unknown"

    # The version holds weights (safetensors only) and the tokenizer files.
    model_dir = Path(mlflow.artifacts.download_artifacts(version.model_uri))
    files = {p.name for p in model_dir.rglob("*") if p.is_file()}
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]

    # Loadable as a pyfunc that answers with the spec's labels, and with its tokenizer.
    labels = set(pd.read_csv(demo_dir / "train.csv")["intent"])
    predictions = mlflow.pyfunc.load_model(version.model_uri).predict(["where is my parcel?"])
    assert set(predictions["label"]) <= labels
    components = mlflow.transformers.load_model(version.model_uri, return_type="components")
    assert tokenizer_sha256(components["tokenizer"]) == tags["attnops.tokenizer_sha256"]

    info = mlflow.models.get_model_info(version.model_uri)
    assert info.signature is not None and info.saved_input_example_info is not None
    assert info.metadata["label_names"] == sorted(labels - {"out_of_scope"})
    resolved = mlflow.artifacts.load_text(f"runs:/{version.run_id}/spec.yaml")
    assert "weight_decay: 0.01" in resolved, "spec.yaml must be the spec with defaults filled in"

    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    for key in ("test_macro_f1", "baseline_macro_f1", "test_ece", "unsupported_assertion_rate",
                "out_of_scope_auroc", "out_of_scope_recall.mahalanobis",
                "latency_ms_p95", "throughput_per_s", "model_size_mb", "process_peak_rss_mb",
                "truncation_rate", "attention_entropy_mean", "train_tokens_per_s",
                "calibration_temperature"):  # fmt: skip
        assert key in run.data.metrics, key
    # Seeded: every CPU run gets this value (the tiny random BERT learns little in a few steps).
    assert run.data.metrics["test_macro_f1"] == pytest.approx(0.0065, abs=0.005)
    artifacts = {a.path for folder in ("", "evaluation", "reference_profile")
                 for a in client.list_artifacts(version.run_id, folder)}  # fmt: skip
    assert {
        "spec.yaml", "spec.source.yaml", "model_card.md", "run_card.json", "data_checks.json",
        "evaluation/confusion_matrix.png",
        "evaluation/reliability.png", "evaluation/attention_entropy.png",
        "evaluation/head_importance.png", "evaluation/evaluation.json",
        "evaluation/attention_entropy_change.png", "evaluation/test_predictions.parquet",
        "reference_profile/reference_profile.parquet", "reference_profile/reference_profile.json",
        "reference_profile/reference_drift_calibration.json",
        "reference_profile/reference_out_of_scope.npz",
    } <= artifacts  # fmt: skip
    checks = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/data_checks.json")
    assert [c["splits"] for c in checks["leakage"]] == [
        "validation in train", "test in train", "test in validation",
    ]  # fmt: skip
    summary = mlflow.artifacts.load_dict(
        f"runs:/{version.run_id}/reference_profile/reference_profile.json"
    )
    assert summary["bf16_on_cpu"] is True  # serving.bf16: the gate re-scores it so
    profile_path = "reference_profile/reference_profile.parquet"
    profile = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=profile_path)
    )
    # The reference is the whole test split (in and out of scope), as live traffic is,
    # with PII noted and redacted.
    test_split = pd.read_csv(demo_dir / "test.csv")
    assert len(profile) == len(test_split)
    assert len(profile["embedding"].iloc[0]) == 8
    assert profile["has_pii"].sum() >= 1
    assert not profile["text"].str.contains("@", regex=False).any()
    assert profile["text"].str.contains("<EMAIL_ADDRESS>|<PHONE_NUMBER>|<CREDIT_CARD>").any()
    assert not (attnops_home / "checkpoints" / "tiny-tickets").exists()
    predictions = pd.read_parquet(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="evaluation/test_predictions.parquet"
        )
    )
    test = pd.read_csv(demo_dir / "test.csv")
    assert len(predictions) == (test["intent"] != "out_of_scope").sum()
    accuracy = (predictions["label"] == predictions["prediction"]).mean()
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy"])
    assert "text" not in predictions.columns

    # The run card says why each choice was made; the fit diagnosis reaches every reader.
    run_card = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/run_card.json")
    assert run_card["why"]["epochs"].startswith("up to 3: set in the spec")
    assert run_card["why"]["word_embeddings"].startswith("trained: default for a randomly")
    fit = run_card["fit"]
    assert run.data.metrics["underfit"] == float(fit["diagnosis"] == "underfit")
    assert run.data.metrics["train_accuracy_sample"] == pytest.approx(fit["train_accuracy"])
    model_card = mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md")
    assert f"**{fit['diagnosis']}**: train accuracy {fit['train_accuracy']:.3f}" in model_card


def test_data_as_published_trains_without_a_validation_file_or_out_of_scope_rows(
    attnops_home, demo_dir, tmp_path, write_spec
):
    """Most public datasets ship train and test only, and no "no intent" label: validation
    is set aside from train, and evaluation has no out-of-scope rows to score."""
    for split in ("train", "test"):
        frame = pd.read_csv(demo_dir / f"{split}.csv")
        frame = frame[frame["intent"] != "out_of_scope"]
        if split == "test":  # reactions the tokenizer has no word for: said in the card
            emoji = frame.head(4).assign(text=["😂😂", "😡", "🙏🙏🙏", "👍"])
            frame = pd.concat([frame, emoji], ignore_index=True)
        frame.to_csv(tmp_path / f"{split}.csv", index=False)
    spec = tiny_spec_dict(tmp_path, epochs=1)
    for field in ("validation", "out_of_scope_label"):
        del spec["data"][field]
    spec_path = str(write_spec(spec))
    version = train(spec_path)
    data_checks = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/data_checks.json")
    evaluation_text = mlflow.artifacts.load_text(
        f"runs:/{version.run_id}/evaluation/evaluation.json"
    )
    assert version.version == "1"
    # No out-of-scope AUROC and empty calibration bins: null, which strict readers parse.
    assert "NaN" not in evaluation_text
    evaluation = json.loads(evaluation_text)
    carved = load_labelled_data(load_spec(spec_path).data).splits["validation"]
    # round(10%) of each of the 20 classes (360 rows): 37, none of promo_code's 5 rows,
    # which data.min_examples_per_class keeps in train.
    assert len(carved) == 37 and "promo_code" not in set(carved["label"])
    leak = {row["splits"]: row for row in data_checks["leakage"]}["validation in train"]
    assert (leak["rows"], leak["near_duplicates"]) == (len(carved), 0)
    assert evaluation["out_of_scope"]["test"] == {}
    assert "validation has 0 out-of-scope inputs" in evaluation["out_of_scope"]["reason"]
    n_test = len(load_labelled_data(load_spec(spec_path).data).splits["test"])
    assert evaluation["metrics"]["unknown_only_share"] == pytest.approx(4 / n_test)
    card = mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md")
    assert "**Unreadable inputs**: " in card


def test_second_run_becomes_the_new_challenger(attnops_home, demo_dir, write_spec):
    path = str(write_spec(tiny_spec_dict(demo_dir, epochs=1)))
    train(path)
    second = train(path)
    assert second.version == "2"
    assert _client().get_model_version_by_alias("tiny-tickets", "challenger").version == 2


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ({"data": {"text_column": "body"}}, "column 'body' not found"),
        ({"model": {"base": "/no/such/model"}}, "no/such/model"),
        # The small demo splits share ~1.5% of their texts: any leakage at all stops here.
        ({"data": {"max_leakage_share": 0.0}}, "above data.max_leakage_share 0 in"),
    ],
)
def test_failed_run_registers_nothing(attnops_home, demo_dir, write_spec, breakage, message):
    spec = tiny_spec_dict(demo_dir)
    for section, change in breakage.items():
        spec[section] = {**spec[section], **change}
    with pytest.raises(Exception, match=message):
        train(str(write_spec(spec)))
    client = _client()
    assert client.search_model_versions("name = 'tiny-tickets'") == []
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-tickets").experiment_id])
    assert run.info.status == "FAILED"
    assert message in run.data.tags["attnops.failure"]


def test_failure_after_the_version_exists_removes_it(
    attnops_home, demo_dir, write_spec, monkeypatch
):
    from mlflow.exceptions import MlflowException

    def refuse(*_args, **_kwargs):
        raise MlflowException("alias store unavailable for this test", error_code="BAD_REQUEST")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(MlflowException, match="alias store unavailable"):
        train(str(write_spec(tiny_spec_dict(demo_dir, epochs=1))))
    client = _client()
    assert client.search_model_versions("name = 'tiny-tickets'") == []
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-tickets").experiment_id])
    assert run.info.status == "FAILED"
