"""`retrain` of a generative version on corrected replies: guarded like classification's,
warm-started from the champion on the original rows plus the corrections, gated, then
released. Real Prefect, real MLflow on SQLite, a tiny random Llama with SmolLM2's tokenizer,
the inference log on SQLite (rows written as a generation server would) and a server that
answers the release's reload; nobody sends the canary traffic, so the release rolls back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from attnops.flows.retrain import retrain
from attnops.flows.train import train
from attnops.models import aliases
from attnops.settings import Settings
from tests.integration.generation_fixtures import TINY_MODEL_GATES, write_generation_spec
from tests.integration.generation_log_rows import (
    generation_server,
    insert_replies,
    registry_client,
    reply_row,
)
from tests.integration.serving_fixtures import free_port
from tests.unit.generation.conftest import model_cache  # noqa: F401

pytestmark = [
    pytest.mark.usefixtures("prefect_server", "model_cache", "attnops_home", "admin_token"),
    pytest.mark.slow,
]
NAME = "tiny-replies"
ARTICLE = "Refunds are paid within 3 business days of approval."


def _spec(folder: Path) -> str:
    return write_generation_spec(
        folder,
        NAME,
        n_test=4,
        generation={"max_new_tokens": 8, "eval_samples": 4, "zero_shot_baseline": True},
        # num_threads unset: each stage takes the CPUs free when it starts
        training={"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3},
        **TINY_MODEL_GATES,
        serving={"port": free_port()},
        release={"canary_window": 10, "timeout_s": 1},
        retrain={"cooldown_s": 3600, "min_new_labels": 3},
    )


def test_retrain_fine_tunes_the_champion_on_corrected_replies_and_gates_it(tmp_path):
    path = _spec(tmp_path)
    train(path)
    client = registry_client()
    client.set_registered_model_alias(NAME, aliases.CHAMPION, "1")
    url = Settings.from_env().inference_db

    insert_replies(url, [reply_row()])
    early = retrain(path, event_id="no-corrections-yet")
    assert early["status"] == "skipped"
    assert early["reason"] == (
        "only 0 corrected replies since v1 was registered; retrain.min_new_labels is 3"
    )

    rows = [
        reply_row(source=f"How long does refund {i} take?", context=ARTICLE, output="9 days.")
        for i in range(4)
    ]
    rows.append(reply_row(source=rows[0]["source"], context=ARTICLE, output="7 days."))
    references = {row["request_id"]: "Within 3 business days." for row in rows[1:]}
    references[rows[0]["request_id"]] = "Refunds take 3 business days."  # superseded below
    insert_replies(url, rows, references)

    with generation_server(path, canary_hallucinated=0.0, canary_replies=0):
        done = retrain(path, event_id="hallucination-alarm")
    assert done["version"] == "2"
    assert done["status"] == "rolled_back", done  # the gate passed; no canary traffic came
    assert "the canary window did not fill" in done["reason"]

    (retrain_spec,) = (Settings.from_env().home / "retrain").glob("*/spec.yaml")
    raw = yaml.safe_load(retrain_spec.read_text())
    # The champion's weights are fine-tuned; the lineage still names the base model.
    assert raw["model"]["warm_start"] == str(retrain_spec.parent / "champion" / "model")
    assert raw["model"]["config_overrides"] == {}
    # Its "zero-shot base" would be the champion: the gate compares the two directly instead.
    assert raw["generation"]["zero_shot_baseline"] is False
    trained_on = pd.read_json(raw["data"]["train"], lines=True)
    validated_on = pd.read_json(raw["data"]["validation"], lines=True)
    # One row per corrected prompt: 3 of the 4 train beside the original rows, one validates.
    assert len(trained_on) == 16 + 3
    live = pd.concat([trained_on.tail(3), validated_on.tail(1)])
    assert set(live["article"]) == {ARTICLE}
    assert live["reply"].tolist() == ["Within 3 business days."] * 4

    v1, v2 = (client.get_model_version(NAME, v) for v in ("1", "2"))
    assert v2.tags["attnops.tokenizer_sha256"] == v1.tags["attnops.tokenizer_sha256"]
    assert v2.tags["attnops.base_model"] == v1.tags["attnops.base_model"] == raw["model"]["base"]
    assert v2.tags["attnops.gate"] == "passed"
    assert v2.tags["attnops.release"] == "rolled_back"
    assert v1.tags["attnops.retrain_trigger"].startswith("started: 4 new corrected replies")
    assert aliases.version_of(client, NAME, aliases.CHAMPION) == "1"
    again = retrain(path, event_id="hallucination-alarm")
    assert again["status"] == "skipped" and "already started a retrain" in again["reason"]
