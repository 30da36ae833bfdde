"""One-shot commands start fast: they import only what their work needs.

An operator types `attnops rollback` or `attnops monitor` during an incident; importing
torch, transformers, Evidently or presidio (spaCy) costs seconds each on a small machine
and none of them is needed to move an alias or to read the start of the CLI. Each check
runs in a fresh interpreter, because this test process has imported everything already.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_spec_dict

ROOT = Path(__file__).resolve().parents[2]
MODEL_STACK = ("torch", "transformers", "presidio_analyzer", "spacy")
"""Loading, scoring or training a model and scanning texts for PII: never for these paths."""


def _loaded_after(code: str, env: dict[str, str] | None = None) -> dict:
    """Runs `code` in a fresh Python; returns its printed JSON plus the heavy modules loaded."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"heavy = [m for m in {(*MODEL_STACK, 'evidently', 'prefect', 'mlflow')!r} "
        "if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, **globals().get('result', {})}))"
    )
    child = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_the_cli_module_imports_no_ml_stack_and_no_service_client():
    """`attnops --help`, a typo or `attnops spec` answer before any heavy import."""
    assert _loaded_after("import attnops.flows.cli")["heavy"] == []


def test_the_monitor_flow_imports_no_model_stack_and_no_evidently_until_it_judges():
    """The monitor reads logged records: no model, no PII scan; Evidently only for a report."""
    heavy = _loaded_after("import attnops.flows.monitor")["heavy"]
    assert not set(heavy) & {*MODEL_STACK, "evidently"}, heavy


@pytest.mark.parametrize("server", ["attnops.serving.app", "attnops.serving.generation_app"])
def test_the_servers_load_no_fitting_monitoring_or_orchestration_library(server):
    """A server scores with saved arrays (out-of-scope scorer, hallucination detector): the
    scikit-learn that fitted them, Evidently and Prefect would only slow its start."""
    probe = f"import {server}, sys\nresult = {{'sklearn': 'sklearn' in sys.modules}}"
    loaded = _loaded_after(probe)
    assert not loaded["sklearn"]
    assert not set(loaded["heavy"]) & {"evidently", "prefect"}, loaded["heavy"]


def test_rollback_moves_the_champion_without_prefect_or_the_model_stack(tmp_path, demo_dir):
    """`attnops rollback` end to end in a fresh process: aliases moved, nothing heavy loaded.

    No Prefect either: a rollback is a few MLflow calls and must work while Prefect is down.
    """
    from mlflow import MlflowClient

    home = tmp_path / ".attnops"
    home.mkdir()
    spec_path = tmp_path / "spec.yaml"
    spec = tiny_spec_dict(demo_dir)
    with socket.socket() as s:  # nothing answers there: rollback only notes that
        s.bind(("127.0.0.1", 0))
        spec["serving"] = {"port": s.getsockname()[1]}
    spec_path.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    for version in ("1", "2"):
        run = client.create_run(experiment)
        if version == "1":
            client.create_registered_model("tiny-tickets")
        client.create_model_version(
            "tiny-tickets", f"{run.info.artifact_uri}/model", run.info.run_id
        )
    client.set_registered_model_alias("tiny-tickets", "champion", "2")
    client.set_registered_model_alias("tiny-tickets", "previous", "1")

    run_rollback = (
        "from attnops.flows.cli import main\n"
        f"result = {{'rc': main(['rollback', '--spec', {str(spec_path)!r}])}}"
    )
    env = {"ATTNOPS_HOME": str(home), "MLFLOW_TRACKING_URI": ""}
    outcome = _loaded_after(run_rollback, env)

    assert outcome["rc"] == 0
    assert str(client.get_model_version_by_alias("tiny-tickets", "champion").version) == "1"
    assert client.get_model_version("tiny-tickets", "2").tags["attnops.release"] == "rolled_back"
    assert outcome["heavy"] == ["mlflow"], outcome["heavy"]
