"""Shared fixtures: tiny random BERT models with the real MiniLM tokenizer, demo data on disk."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

# Before anything imports Prefect, MLflow or huggingface_hub: no telemetry, no network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def unavailable(reason: str) -> None:
    """Skip on a laptop that lacks a tool or server; in CI (CI=true) that is a failure.

    `.ci/run` installs every tool and starts every server the tests need, so a skip there
    would hide a gap rather than report one.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def command_path(name: str, install_hint: str) -> str:
    """The path of a command on PATH or beside this Python, else `unavailable`."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        unavailable(f"{name} is not installed ({install_hint})")
    return found


TINY_BERT = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}


@pytest.fixture(scope="session")
def tokenizer():
    from attnops.models.modeling import load_tokenizer
    from attnops.spec import ModelSpec

    return load_tokenizer(ModelSpec())


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Small demo splits (csv) shared by the tests that only read them."""
    from attnops.demo.tickets import write_demo_dataset

    folder = tmp_path_factory.mktemp("demo")
    write_demo_dataset(folder, seed=0, n_train=360, n_validation=120, n_test=160)
    return folder


def tiny_spec_dict(data_dir: Path, **training) -> dict:
    """A valid spec over `data_dir` with a 2-layer random BERT that trains in seconds."""
    return {
        "name": "tiny-tickets",
        "model": {"max_length": 48, "config_overrides": TINY_BERT},
        "data": {
            "train": str(data_dir / "train.csv"),
            "validation": str(data_dir / "validation.csv"),
            "test": str(data_dir / "test.csv"),
            "text_column": "text",
            "label_column": "intent",
            "slice_columns": ["channel"],
            "out_of_scope_label": "out_of_scope",
        },
        "training": {
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "warmup_ratio": 0.0,
            "seed": 0,
            **training,
        },
        "evaluation": {"latency_samples": 5, "probe_size": 8, "embedding_dim": 8},
    }


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec dict as YAML and return its path."""

    def write(spec: dict, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


def pytest_collection_modifyitems(config, items) -> None:
    """One speed class, the `slow` marker: `tests/slow/` (end-to-end scenarios) is slow as a
    whole; slow tests elsewhere sit beside the fast tests of the same code and carry the
    marker themselves. `pytest -m "not slow"` is the fast suite either way."""
    slow_folder = Path(__file__).parent / "slow"
    for item in items:
        if slow_folder in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)
