"""The train flow with training.search: trials as Prefect tasks and nested MLflow runs, the
best configuration trained and registered with the search's evidence."""

import json

import mlflow
import pytest
from mlflow import MlflowClient

from attnops.flows.search import search
from attnops.flows.train import train
from attnops.models import registry
from attnops.settings import Settings
from tests.conftest import tiny_spec_dict

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


def _client() -> MlflowClient:
    return registry.client_for(Settings.from_env())


def test_train_with_search_registers_the_best_trial_with_its_evidence(
    attnops_home, demo_dir, write_spec
):
    spec = tiny_spec_dict(demo_dir, epochs=2)
    spec["training"]["search"] = {
        "params": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [16, 32]},
        },
        "n_trials": 3,
        "pruner": "none",
        "parallel_trials": 2,  # two Prefect tasks at once, then the third
    }
    version = train(str(write_spec(spec)))
    client = _client()

    assert version.version == "1"
    assert client.get_model_version_by_alias("tiny-tickets", "challenger").version == 1
    parent = client.get_run(version.run_id)
    assert parent.info.status == "FINISHED"

    trials = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{version.run_id}'",
        order_by=["tags.`attnops.trial_number` ASC"],
    )
    assert [t.data.tags["attnops.trial_number"] for t in trials] == ["0", "1", "2"]
    assert {t.data.tags["attnops.trial_state"] for t in trials} == {"COMPLETE"}
    # Trial 0 is the spec's own recipe; every trial logs its draws and its score per epoch.
    assert float(trials[0].data.params["learning_rate"]) == 3e-3
    assert trials[0].data.params["batch_size"] == "16"
    history = client.get_metric_history(trials[0].info.run_id, "val_macro_f1")
    assert [m.step for m in history] == [1, 2]

    best = max(trials, key=lambda t: t.data.metrics["best_val_macro_f1"])
    for name in ("learning_rate", "batch_size"):
        assert parent.data.params[f"search.best.{name}"] == best.data.params[name]
    # The registered model was trained with the best values.
    info = mlflow.models.get_model_info(version.model_uri)
    trained_with = info.metadata["spec"]["training"]
    assert trained_with["learning_rate"] == float(best.data.params["learning_rate"])
    assert trained_with["batch_size"] == int(best.data.params["batch_size"])
    assert trained_with["search"] is None

    # ... and is the best trial itself, kept rather than trained again.
    run_card = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/run_card.json")
    assert run_card["search_trial"] == f"trial-{best.data.tags['attnops.trial_number']}"
    assert parent.data.metrics["best_val_macro_f1"] == best.data.metrics["best_val_macro_f1"]
    kept = list((attnops_home / "search").glob("*/trial-*"))
    assert [p.name for p in kept] == [run_card["search_trial"]], "only the winner stays on disk"

    artifacts = {a.path for a in client.list_artifacts(version.run_id, "search")}
    assert {
        "search/search_trials.csv", "search/search_trials.md", "search/search_best.json",
        "search/search_importance.png",
    } <= artifacts  # fmt: skip
    chosen = json.loads(
        mlflow.artifacts.load_text(f"runs:/{version.run_id}/search/search_best.json")
    )
    assert chosen["trial"] == int(best.data.tags["attnops.trial_number"])
    description = client.get_model_version("tiny-tickets", "1").description
    assert "## Hyperparameter search" in description and "3 trials (3 complete)" in description

    # A restarted flow resumes the study: its budget is spent, so no trial runs again.
    again = train(str(write_spec(spec)))
    assert again.version == "2"
    assert not client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{again.run_id}'",
    )
    resumed = client.get_run(again.run_id).data.params
    assert resumed["search.best.learning_rate"] == parent.data.params["search.best.learning_rate"]

    # An extra worker (the `search` flow) on the same study runs what a raised budget adds,
    # nested under the train run that last worked on the study.
    spec["training"]["search"]["n_trials"] = 4
    assert search(str(write_spec(spec))) == 1
    (extra,) = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{again.run_id}'",
    )
    assert extra.data.tags["attnops.trial_number"] == "3"
