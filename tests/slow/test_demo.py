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


def _demo(cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "ATTNOPS_"))
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "attnops.flows.cli", "demo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done, time.perf_counter() - started


@pytest.mark.slow
def test_demo_runs_the_whole_loop_in_minutes_and_leaves_the_evidence(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    done, seconds = _demo(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in ("train v1", "gate v1", "release v1", "serve", "normal traffic", "monitor",
                 "drifted traffic (new product line)", "retrain -> v2"):  # fmt: skip
        assert f"  {step}" in out.split("=== attnops demo: what happened ===")[1], step
    assert "alarm:" in out and "promoted: all" in out
    assert "MLflow UI:" in out and "Prefect UI:" in out
    # The target is 5 minutes on 2 cores (measured: 4:53); 10% more absorbs machine noise.
    assert seconds < 330, f"the demo took {seconds:.0f} s"

    tracking = f"sqlite:///{tmp_path / '.attnops' / 'demo' / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    client = MlflowClient(tracking)
    name = "support-tickets"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, "previous").version) == "1"
    v1, v2 = (client.get_model_version(name, v) for v in ("1", "2"))
    assert v1.tags["attnops.gate"] == v2.tags["attnops.gate"] == "passed"
    assert v2.tags["attnops.release"] == "promoted"
    assert v2.tags["attnops.gate_champion"] == "1"
    assert v1.tags["attnops.tokenizer_sha256"] == v2.tags["attnops.tokenizer_sha256"]
    for version, folder in ((v1, "gate"), (v2, "gate"), (v2, "release")):
        files = {a.path for a in client.list_artifacts(version.run_id, folder)}
        assert f"{folder}/{folder}.json" in files, (version.version, files)
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/2"))
    files = {p.name for p in model_dir.rglob("*") if p.is_file()}
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= files, files

    metrics = client.get_run(v1.run_id).data.metrics
    assert metrics["test_macro_f1"] >= 0.85
    assert metrics["baseline_macro_f1"] < metrics["test_macro_f1"]

    monitoring = client.get_experiment_by_name(f"{name}-monitoring")
    runs = client.search_runs([monitoring.experiment_id], "tags.`attnops.stage` = 'monitor'")
    assert sorted(r.data.tags["attnops.alarm"] for r in runs) in (["false", "true"], ["true"] * 2)
    alarm = next(r for r in runs if r.data.tags["attnops.alarm"] == "true")
    assert "monitor/drift.html" in {
        a.path for a in client.list_artifacts(alarm.info.run_id, "monitor")
    }
