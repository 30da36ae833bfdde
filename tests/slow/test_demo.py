"""`attnops demo` on the real MiniLM, exactly as a user runs it after `git clone`."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_registers_a_good_model_with_its_tokenizer_in_minutes(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "ATTNOPS_"))
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "attnops.flows.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert "models:/support-tickets/1" in done.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in done.stdout
    assert seconds < 300

    tracking = f"sqlite:///{tmp_path / '.attnops' / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    client = MlflowClient(tracking)
    version = client.get_model_version_by_alias("support-tickets", "challenger")
    assert len(version.tags["attnops.tokenizer_sha256"]) == 64
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/support-tickets/1"))
    files = {p.name for p in model_dir.rglob("*") if p.is_file()}
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= files, files

    # The gate ran on it, and its decision and reports are on the version.
    assert "gate passed for support-tickets v1 (no champion)" in done.stdout
    assert version.tags["attnops.gate"] == "passed", version.tags.get("attnops.gate_reasons")
    gate_files = {a.path for a in client.list_artifacts(version.run_id, "gate")}
    assert {"gate/gate.json", "gate/classification.html"} <= gate_files

    metrics = client.get_run(version.run_id).data.metrics
    assert metrics["test_macro_f1"] >= 0.90
    # The demo data is hard enough that attention visibly beats bag-of-words.
    assert metrics["baseline_macro_f1"] <= metrics["test_macro_f1"] - 0.05
