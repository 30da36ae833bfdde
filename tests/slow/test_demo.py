"""`attnops demo` on the real MiniLM, exactly as a user runs it after `git clone`, and the
behaviour of the champion it leaves (minimum functionality, invariance, direction)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from attnops.models.batching import encode
from attnops.models.inference import predict
from attnops.models.versions import load_version

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


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo, run once in a fresh folder: (process, seconds, folder)."""
    folder = tmp_path_factory.mktemp("demo-run")
    shutil.copytree(REPO / "configs", folder / "configs")
    done, seconds = _demo(folder)
    return done, seconds, folder


def test_demo_runs_the_whole_loop_in_minutes_and_leaves_the_evidence(demo_run):
    done, seconds, tmp_path = demo_run
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


# Intents a support team takes for granted, one plain message each.
PLAIN = {
    "I want a refund for my order": "refund_request",
    "where is my refund? it has been two weeks": "refund_status",
    "please cancel my order before it ships": "cancel_order",
    "my package never arrived": "missing_package",
    "I forgot my password and cannot log in": "password_reset",
    "the item I received is broken": "damaged_item",
    "I was charged twice on my card": "billing_dispute",
    "how do I change my delivery address": "change_address",
}


def test_the_demo_champion_behaves(demo_run):
    """Minimum functionality, invariance and direction on the champion the demo leaves."""
    done, _, folder = demo_run
    assert done.returncode == 0, done.stderr[-3000:]
    tracking = f"sqlite:///{folder / '.attnops' / 'demo' / 'mlflow.db'}"
    client = MlflowClient(tracking)
    mv = client.get_model_version_by_alias("support-tickets", "champion")
    loaded = load_version(client, "support-tickets", str(mv.version), folder / "scratch")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    names = np.array([model.config.id2label[i] for i in range(model.config.num_labels)])

    def answer(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        data = encode(tokenizer, texts, 128)
        probs = predict(model, data, pad_id=tokenizer.pad_token_id, device=torch.device("cpu"))
        return names[probs.probs.argmax(1)], probs.probs.max(1)

    labels, confidence = answer(list(PLAIN))
    assert labels.tolist() == list(PLAIN.values())

    # Invariance: order numbers, customer names and pleasantries do not change the intent.
    variants = [
        ["where is my order 48213", "where is my order 99120"],
        ["where is my order, my name is Maria Lopez", "where is my order, my name is John Smith"],
        ["I want a refund for my order. I love your shop.", "I want a refund for my order."],
        ["I want a refund for my order. Thanks a lot!", "I want a refund for my order."],
    ]
    for pair in variants:
        pair_labels, pair_confidence = answer(pair)
        assert pair_labels[0] == pair_labels[1], pair
        assert abs(pair_confidence[0] - pair_confidence[1]) < 0.1, (pair, pair_confidence)

    # Direction: a question no intent covers gets far less confidence than plain requests.
    _, outside = answer(["who won the football game yesterday", "what is the capital of Peru"])
    assert outside.mean() < confidence.mean() - 0.2, (outside, confidence)
