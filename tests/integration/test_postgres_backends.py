"""The same CLI and flows on real backends: PostgreSQL, an S3 store, MLflow and Prefect servers.

An MLflow tracking server (runs and registry in PostgreSQL, artifacts served from an S3
bucket on moto), a Prefect server on PostgreSQL and the inference log on PostgreSQL.
The `attnops` commands run in one child process whose environment points at the servers,
as a user's would: Prefect keeps process-wide state (its events worker, the session's test
server) and MLflow a process-wide tracking URI, which must not leak into other modules.
This process only looks at what landed in each backend.

Without ATTNOPS_TEST_POSTGRES_URL these tests skip; with CI=true that is a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from sqlalchemy import create_engine, func, select, text

from attnops.serving.log_schema import feedback, inference_log
from tests.integration import postgres_fixtures as pg
from tests.integration.serving_fixtures import serving_spec

NAME = "tiny-tickets"
LOOP_TIMEOUT_S = 600
RELEASE = {  # tiny random models: the canary is judged on plumbing, not on quality
    "canary_window": 40,
    "timeout_s": 120,
    "max_unsupported_assertion_increase": 1.0,
    "max_accuracy_drop": 1.0,
    "max_latency_increase": 3.0,
}


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    with pg.real_backends(tmp_path_factory.mktemp("backends")) as started:
        yield started


@pytest.fixture(scope="module")
def loop(backends, demo_dir) -> dict:
    """v1 and v2 trained, gated and released through the CLI against the servers."""
    spec_path = serving_spec(demo_dir, backends.folder, canary_share=0.5)
    raw = yaml.safe_load(Path(spec_path).read_text())
    Path(spec_path).write_text(yaml.safe_dump({**raw, "release": RELEASE}))
    result_path, log_path = backends.folder / "loop.json", backends.folder / "loop.log"
    with log_path.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "tests.integration.postgres_fixtures", spec_path, result_path],
            env=backends.cli_env(),
            cwd=backends.folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=LOOP_TIMEOUT_S,
        )
    log = log_path.read_text(errors="replace")
    tail = log[-6000:]
    assert done.returncode == 0 and result_path.exists(), tail
    result = json.loads(result_path.read_text())
    failed = [step for step in result["steps"] if step["rc"] != 0]
    assert len(result["steps"]) == 6 and not failed, f"{result['steps']}\n{tail}"
    return {**result, "log": log}


@pytest.mark.slow
def test_the_cli_trains_gates_and_releases_through_the_servers(loop):
    assert "gate passed for tiny-tickets v2 vs champion v1" in loop["log"]
    assert loop["traffic_sent"] >= RELEASE["canary_window"]
    assert (loop["ready"]["champion"], loop["ready"]["canary"]) == ("2", None)


@pytest.mark.slow
def test_mlflow_server_keeps_versions_aliases_and_tags_in_postgres(backends, loop, tmp_path):
    client = MlflowClient(tracking_uri=backends.mlflow_url)
    versions = {mv.version: mv for mv in client.search_model_versions(f"name = '{NAME}'")}
    assert set(versions) == {"1", "2"}
    model = client.get_registered_model(NAME)
    assert model.aliases == {"champion": "2", "previous": "1", "challenger": "2"}
    for mv in versions.values():
        assert mv.tags["attnops.gate"] == "passed"
        assert mv.tags["attnops.release"] == "promoted"
        assert len(mv.tags["attnops.tokenizer_sha256"]) == 64
    assert versions["2"].tags["attnops.gate_champion"] == "1"

    run = client.get_run(versions["2"].run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert run.data.metrics["test_macro_f1"] >= 0.0
    release = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "release/release.json", tmp_path)
        ).read_text()
    )
    assert release["promote"] and (release["canary"], release["champion"]) == ("2", "1")

    # Read back from PostgreSQL itself: the server did not fall back to a local store.
    engine = create_engine(backends.databases["mlflow"])
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT version FROM model_versions WHERE name = :name ORDER BY version"),
            {"name": NAME},
        ).scalars()
        assert list(stored) == [1, 2]
        aliases = conn.execute(
            text("SELECT alias, version FROM registered_model_aliases WHERE name = :name"),
            {"name": NAME},
        ).all()
        assert dict(aliases) == {"champion": 2, "previous": 1, "challenger": 2}
    engine.dispose()


@pytest.mark.slow
def test_artifacts_landed_in_the_s3_bucket(backends, loop, tmp_path):
    client = MlflowClient(tracking_uri=backends.mlflow_url)
    keys = pg.s3_keys(backends)
    assert keys and all(key.startswith(f"{pg.ARTIFACTS_PREFIX}/") for key in keys)
    for version in ("1", "2"):
        mv = client.get_model_version(NAME, version)
        run = [key for key in keys if f"/{mv.run_id}/artifacts/" in key]
        names = {key.rsplit("/artifacts/", 1)[1] for key in run}
        assert {"spec.yaml", "run_card.json", "gate/gate.json", "release/release.json"} <= names
        assert any(name.startswith("reference_profile/") for name in names), names
    # The model and its tokenizer, in the bucket under the logged model.
    model_files = {key.rsplit("/", 1)[1] for key in keys if "/models/" in key}
    assert {"model.safetensors", "tokenizer.json"} <= model_files, sorted(model_files)

    # What MLflow serves is what the bucket holds.
    import boto3

    mv = client.get_model_version(NAME, "2")
    [key] = [k for k in keys if k.endswith(f"/{mv.run_id}/artifacts/release/release.json")]
    s3 = boto3.client("s3", endpoint_url=backends.s3_endpoint, **pg._boto_credentials())
    in_bucket = s3.get_object(Bucket=pg.BUCKET, Key=key)["Body"].read()
    served = client.download_artifacts(mv.run_id, "release/release.json", tmp_path)
    assert Path(served).read_bytes() == in_bucket


@pytest.mark.slow
def test_prefect_server_recorded_the_flow_runs(backends, loop):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # A settings context only around the reads: the session's test server stays untouched.
    with (
        temporary_settings(updates={PREFECT_API_URL: backends.prefect_api_url}),
        get_client(sync_client=True) as client,
    ):
        flows = {flow.id: flow.name for flow in client.read_flows()}
        runs = client.read_flow_runs()
        task_runs = client.read_task_runs()
    finished = sorted((flows[run.flow_id], run.state_name) for run in runs)
    assert finished == [(name, "Completed") for name in ("gate", "gate", "release", "release")] + [
        ("train", "Completed"),
        ("train", "Completed"),
    ]
    assert {run.flow_run_id for run in task_runs} == {run.id for run in runs}

    engine = create_engine(backends.databases["prefect"])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM flow_run")).scalar() == 6
    engine.dispose()


@pytest.mark.slow
def test_inference_log_rows_in_postgres(backends, loop):
    engine = create_engine(backends.databases["inference"])
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(inference_log.c.route, func.count()).group_by(inference_log.c.route)
            ).all()
        )
        versions = dict(
            conn.execute(
                select(inference_log.c.route, func.min(inference_log.c.version)).group_by(
                    inference_log.c.route
                )
            ).all()
        )
        statuses = set(conn.execute(select(inference_log.c.status).distinct()).scalars())
        embedding = conn.execute(select(inference_log.c.embedding).limit(1)).scalar_one()
        labels = conn.execute(select(func.count()).select_from(feedback)).scalar()
    engine.dispose()
    assert counts["canary"] >= RELEASE["canary_window"] and counts["champion"] > 0, counts
    assert versions["canary"] == "2" and versions["champion"] == "1", versions
    assert sum(counts.values()) >= loop["traffic_sent"] * 0.9
    assert statuses == {200}
    assert len(embedding) == 4 * 8  # float32 x evaluation.embedding_dim of the tiny spec
    assert labels > 0  # the simulated customers labelled about half their tickets


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), (None, pytest.skip.Exception)]
)
def test_without_postgres_a_laptop_skips_and_ci_fails(monkeypatch, ci, outcome):
    monkeypatch.delenv(pg.POSTGRES_URL_ENV, raising=False)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=pg.POSTGRES_URL_ENV):
        pg.postgres_admin_url()
