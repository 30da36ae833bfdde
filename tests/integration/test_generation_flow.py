"""task: generation through the real flows: train registers a text-generation version with
its tokenizer, generation config and hallucination detector; gate judges it, alone and
against a champion. Real Prefect server, real MLflow on SQLite, a tiny random Llama with
SmolLM2's tokenizer."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from attnops.flows.gate import gate
from attnops.flows.train import train
from attnops.models import registry
from attnops.models.generation.altered_twins import NAME as TWINS_NAME
from attnops.models.generation.detector import HallucinationDetector
from attnops.models.modeling import tokenizer_sha256
from attnops.settings import Settings
from tests.unit.generation.conftest import TINY_LLAMA, model_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_server", "model_cache")


@pytest.fixture(scope="module")
def smollm2_tokenizer(model_cache):  # noqa: F811
    from attnops.models.generation.base import load_base_tokenizer
    from attnops.spec import ModelSpec

    return load_base_tokenizer(ModelSpec(base="smollm2-135m-instruct"), model_cache)


@pytest.fixture(scope="module")
def reply_data(tmp_path_factory) -> Path:
    from attnops.demo.ticket_replies import write_ticket_replies

    folder = tmp_path_factory.mktemp("replies")
    write_ticket_replies(folder, seed=0, n_train=32, n_validation=8, n_test=8, n_labelled=40)
    return folder


def _spec(data: Path, **gate) -> dict:
    return {
        "name": "tiny-replies",
        "task": "generation",
        "model": {"base": "smollm2-135m-instruct", "config_overrides": TINY_LLAMA},
        "data": {
            "train": str(data / "train.jsonl"),
            "validation": str(data / "validation.jsonl"),
            "test": str(data / "test.jsonl"),
            "source_column": "ticket",
            "target_column": "reply",
            "context_column": "article",
        },
        "generation": {
            "max_new_tokens": 8,
            "hallucination_set": str(data / "hallucination.jsonl"),
            "eval_samples": 6,
        },
        "training": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3},
        "evaluation": {"probe_size": 4},
        "generation_gate": {
            "min_rouge_l": 0,
            "require_beats_base": False,
            "max_hallucination_rate": 1.0,
            **gate,
        },
    }


def test_train_registers_a_generator_with_tokenizer_config_and_detector(
    attnops_home, reply_data, write_spec, smollm2_tokenizer
):
    version = train(str(write_spec(_spec(reply_data))))
    client = registry.client_for(Settings.from_env())
    tags = client.get_model_version("tiny-replies", version.version).tags
    assert tags["attnops.task"] == "generation"
    assert tags["attnops.tokenizer_sha256"] == tokenizer_sha256(smollm2_tokenizer)
    assert (
        float(tags["attnops.test_hallucination_rate"]) == version.metrics["test_hallucination_rate"]
    )

    model_dir = Path(mlflow.artifacts.download_artifacts(version.model_uri))
    files = {p.name for p in model_dir.rglob("*") if p.is_file()}
    assert {"model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    config = json.loads(next(model_dir.rglob("generation_config.json")).read_text())
    assert config["max_new_tokens"] == 8 and not config.get("do_sample")
    generated = mlflow.pyfunc.load_model(version.model_uri).predict(["Where is my order?"])
    assert isinstance(generated[0], str)

    evidence = Path(
        mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="evaluation")
    )
    per_input = pd.read_parquet(evidence / "per_input.parquet")
    assert len(per_input) == 6 and "pii_leak_entities" in per_input.columns
    assert {"rouge_l", "hallucinated", "baseline_rouge_l", "ttft_ms"} <= set(per_input.columns)
    detector = HallucinationDetector.from_json(
        (evidence / "hallucination_detector.json").read_text()
    )
    assert detector.threshold is not None
    report = json.loads((evidence / "evaluation.json").read_text())
    assert set(report["detector"]["overall"]) == {"text", "attention", "logprob", "combined"}
    assert report["pii_leakage"]["of"] == 6
    for key in ("test_rouge_l", "test_chrf", "test_fact_recall", "baseline_rouge_l",
                "determinism_rate", "ttft_ms_p95", "inter_token_ms_p95",
                "cost_per_1k_requests_usd", "detector_auc_combined"):  # fmt: skip
        assert key in version.metrics, key
    assert version.metrics["determinism_rate"] == 1.0


def test_without_a_labelled_set_or_validation_file_the_detector_learns_from_altered_twins(
    attnops_home, reply_data, write_spec
):
    """Data as a user has it: train and test only, no labelled hallucinations."""
    spec = _spec(reply_data)
    del spec["data"]["validation"], spec["generation"]["hallucination_set"]
    spec["data"]["validation_share"] = 0.4  # 13 of 32 rows: the twins need 10 inputs
    version = train(str(write_spec(spec)))
    evidence = Path(
        mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="evaluation")
    )
    report = json.loads((evidence / "evaluation.json").read_text())
    assert report["detector"]["labelled_set"] == TWINS_NAME
    assert report["detector"]["n_fit"] + report["detector"]["n_held_out"] == 2 * 13
    assert (evidence / "hallucination_detector.json").is_file()
    card = mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md")
    assert f"`{TWINS_NAME}`" in card and "No labelled set was given" in card


def test_gate_judges_a_generator_alone_and_against_its_champion(
    attnops_home, reply_data, write_spec
):
    path = str(write_spec(_spec(reply_data)))
    first = train(path)
    alone = gate(path, candidate=first.version)
    assert alone.passed and alone.champion is None
    names = [check.name for check in alone.checks]
    assert {"rouge_l_floor", "hallucination", "pii_leakage", "ttft_ms_p95"} <= set(names)

    client = registry.client_for(Settings.from_env())
    client.set_registered_model_alias("tiny-replies", "champion", first.version)
    second = train(path)
    versus = gate(path, candidate=second.version)
    assert versus.champion == first.version
    checks = {check.name: check for check in versus.checks}
    assert "rouge_l_vs_champion" in checks  # the same seeded test inputs: paired
    assert "champion" in checks["hallucination"].reason
    tags = client.get_model_version("tiny-replies", second.version).tags
    assert tags["attnops.gate"] == ("passed" if versus.passed else "failed")


def test_a_labelled_set_with_bad_labels_stops_training_before_it_starts(
    attnops_home, reply_data, write_spec, tmp_path
):
    bad = tmp_path / "labelled.jsonl"
    rows = pd.read_json(reply_data / "hallucination.jsonl", lines=True)
    rows.loc[0, "label"] = 2
    rows.to_json(bad, orient="records", lines=True)
    spec = _spec(reply_data)
    spec["generation"]["hallucination_set"] = str(bad)
    with pytest.raises(Exception, match=r"labelled.jsonl: column 'label' must be 0 .* or 1"):
        train(str(write_spec(spec)))
    # Only faithful outputs: nothing to fit on, said before a fine-tune is spent on it.
    rows[rows["label"] == 0].to_json(bad, orient="records", lines=True)
    with pytest.raises(Exception, match=r"parts hold fit: \d+ faithful, 0 hallucinated"):
        train(str(write_spec(spec)))
    client = registry.client_for(Settings.from_env())
    assert not client.search_model_versions("name = 'tiny-replies'")
