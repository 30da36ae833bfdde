"""`release` of a generative version: canary -> observe its logged replies -> promote or roll
back, through the same aliases and evidence as classification.

Real Prefect, real MLflow on SQLite, the inference log on SQLite and a real HTTP server on
loopback that answers the release's reload as a generation server does and then logs the
replies of both versions; the detector scores the canary's replies seconds later, so the
release must keep observing until they are scored. (The server's own canary routing is
serving's to test; the decision's checks are unit-tested in test_generation_canary.py.)
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml

from attnops.flows.release import release
from attnops.models import aliases
from tests.integration.generation_log_rows import (
    generation_server,
    registry_client,
)
from tests.integration.serving_fixtures import free_port

pytestmark = pytest.mark.usefixtures("prefect_server", "attnops_home", "admin_token")
NAME = "tiny-replies"
WINDOW = 40


def _spec(folder: Path, timeout_s: float = 60) -> str:
    spec = {
        "name": NAME,
        "task": "generation",
        "data": {"train": "t.jsonl", "validation": "v.jsonl", "test": "s.jsonl"},
        "serving": {"port": free_port()},
        "release": {"canary_window": WINDOW, "timeout_s": timeout_s},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _two_versions() -> None:
    """v1 the champion, v2 gated: versions with a run for their evidence, nothing to load."""
    client = registry_client()
    experiment = client.create_experiment(NAME)
    client.create_registered_model(NAME)
    for _ in range(2):
        run = client.create_run(experiment)
        client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_model_version_tag(NAME, "2", "attnops.gate", "passed")
    client.set_registered_model_alias(NAME, aliases.CHAMPION, "1")


def _evidence(version: str) -> dict:
    run_id = registry_client().get_model_version(NAME, version).run_id
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/release/release.json")


def test_a_canary_as_good_as_the_champion_is_promoted_once_its_replies_are_scored(tmp_path):
    path = _spec(tmp_path)
    _two_versions()
    with generation_server(path, canary_hallucinated=0.05, canary_replies=WINDOW):
        outcome = release(path, candidate="2")
    assert outcome["promoted"], outcome["reasons"]
    client = registry_client()
    assert aliases.version_of(client, NAME, aliases.CHAMPION) == "2"
    assert aliases.version_of(client, NAME, aliases.PREVIOUS) == "1"
    assert aliases.version_of(client, NAME, aliases.CANARY) is None
    version = client.get_model_version(NAME, "2")
    assert version.tags["attnops.release"] == "promoted"
    evidence = _evidence("2")
    checks = {check["name"]: check for check in evidence["checks"]}
    assert set(checks) == {
        "error_rate",
        "hallucination_rate",
        "pii_leaks",
        "ttft_ms_p95",
        "inter_token_ms_p95",
        "output_tokens",
    }
    assert checks["hallucination_rate"]["values"]["canary_scored"] == WINDOW  # waited for them
    assert not evidence["keep_observing"]
    assert "| hallucination_rate | pass | the detector flagged" in version.description


def test_a_canary_that_hallucinates_more_is_rolled_back_with_both_rates_on_its_page(tmp_path):
    path = _spec(tmp_path)
    _two_versions()
    with generation_server(path, canary_hallucinated=0.5, canary_replies=2 * WINDOW):
        outcome = release(path, candidate="2")
    assert not outcome["promoted"]
    assert outcome["reasons"].startswith("hallucination_rate: the detector flagged")
    assert f"of {2 * WINDOW} canary replies vs" in outcome["reasons"]
    client = registry_client()
    assert aliases.version_of(client, NAME, aliases.CHAMPION) == "1"
    assert aliases.version_of(client, NAME, aliases.CANARY) is None
    version = client.get_model_version(NAME, "2")
    assert version.tags["attnops.release"] == "rolled_back"
    assert "hallucination_rate" in version.tags["attnops.release_reasons"]
    assert "| hallucination_rate | **FAIL** |" in version.description


def test_a_canary_without_enough_traffic_is_rolled_back_when_time_runs_out(tmp_path):
    path = _spec(tmp_path, timeout_s=3)
    _two_versions()
    with generation_server(path, canary_hallucinated=0.0, canary_replies=WINDOW // 2):
        outcome = release(path, candidate="2")
    assert not outcome["promoted"]
    assert outcome["reasons"].startswith("the canary window did not fill within 3 s")
    assert "not enough canary traffic: canary 20 and champion 60" in outcome["reasons"]
    assert _evidence("2")["keep_observing"]
    assert aliases.version_of(registry_client(), NAME, aliases.CHAMPION) == "1"
