"""`attnops monitor` on a generative champion: the window is read from the generation log
(rows inserted here as the server writes them), judged against the version's registered
reference profile, logged to MLflow, announced by `attnops.drift.detected` on alarm and
pushed as gauges. Real Prefect server, real MLflow on SQLite, a tiny random Llama trained
and registered through the real train flow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest

from attnops.flows.monitor import monitor
from attnops.flows.train import train
from attnops.models import aliases, registry, versions
from attnops.serving.generation_log_schema import generation_context, generation_log
from attnops.serving.log_schema import create_log_engine, metadata
from attnops.settings import Settings
from tests.integration.generation_fixtures import write_generation_spec
from tests.unit.generation.conftest import model_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_server", "model_cache")
NAME = "tiny-replies-monitored"
WINDOW = 20


def _client():
    return registry.client_for(Settings.from_env())


@pytest.fixture
def champion(attnops_home, tmp_path) -> tuple[str, pd.DataFrame]:
    """(spec path, the champion's reference profile) for one trained tiny version."""
    path = write_generation_spec(
        tmp_path,
        NAME,
        n_test=16,
        generation={"max_new_tokens": 8, "eval_samples": 16},
        monitoring={"window_size": WINDOW, "bootstrap_resamples": 500},
    )
    version = train(path)
    _client().set_registered_model_alias(NAME, aliases.CHAMPION, version.version)
    evidence = versions.download_evidence(version.run_id, attnops_home / "evidence")
    return path, pd.read_parquet(evidence / "reference_profile" / "reference_generation.parquet")


def _log(reference: pd.DataFrame, first_ts: float, unscored: int = 0, **overrides) -> None:
    """Write one window of champion rows, copies of the reference's inputs and outputs
    (same distribution), as the server logs them (articles stored once by hash); the
    detector has not scored the first `unscored` yet."""
    rows = reference.sample(WINDOW, replace=True, random_state=int(first_ts)).reset_index()
    engine = create_log_engine(Settings.from_env().inference_db)
    metadata.create_all(engine)
    contexts = {hashlib.sha256(t.encode()).hexdigest(): t for t in rows["context"]}
    with engine.begin() as conn:
        known = {r.sha256 for r in conn.execute(generation_context.select())}
        fresh = [{"sha256": k, "text": t} for k, t in contexts.items() if k not in known]
        if fresh:
            conn.execute(generation_context.insert(), fresh)
        conn.execute(
            generation_log.insert(),
            [
                {
                    "request_id": f"r{first_ts + i:.0f}",
                    "ts": first_ts + i,
                    "model_name": NAME,
                    "version": "1",
                    "route": aliases.CHAMPION,
                    "source": row.source,
                    "context_sha256": hashlib.sha256(row.context.encode()).hexdigest(),
                    "output": row.output,
                    "has_pii": False,
                    "output_pii_leaks": "",
                    "prompt_tokens": int(row.prompt_tokens),
                    "output_tokens": int(row.output_tokens),
                    "ttft_ms": 5.0,
                    "latency_ms": 20.0,
                    "status": 200,
                    "stopped_at_eos": False,
                    "hallucination_score": None if i < unscored else float(row.hallucination_score),
                    "hallucination_flag": None if i < unscored else bool(row.hallucinated),
                }
                | overrides
                for i, row in enumerate(rows.itertuples())
            ],
        )


def test_monitor_judges_the_generation_window_and_alarms_on_leaking_outputs(
    champion, pushgateway_if_installed, monkeypatch
):
    path, reference = champion
    assert "output_pii_leaks" in reference.columns  # the profile keeps its outputs' leaks
    if pushgateway_if_installed:
        monkeypatch.setenv("ATTNOPS_PUSHGATEWAY_URL", pushgateway_if_installed)
    assert monitor(path)["status"] == "waiting"

    _log(reference, first_ts=1_000, unscored=5)
    calm = monitor(path)
    assert calm["status"] == "ok", calm["reasons"]
    run = mlflow.get_run(calm["run_id"])
    assert run.data.tags["attnops.alarm"] == "false"
    assert run.data.metrics["window_records"] == WINDOW
    assert run.data.metrics["hallucination_not_scored"] == 5
    assert run.data.metrics["hallucination_scored"] == WINDOW - 5
    files = {a.path for a in _client().list_artifacts(calm["run_id"], "monitor")}
    assert files == {"monitor/assessment.json", "monitor/checks.md"}
    assert monitor(path)["status"] == "stale", "the same window is judged once"

    _log(reference, first_ts=2_000, output_pii_leaks="EMAIL_ADDRESS")
    alarm = monitor(path)
    assert alarm["status"] == "alarm" and alarm["severity"] == "high" and alarm["event_id"]
    assert any(
        r.startswith("PII leaks: 100.0% of the window's 20 outputs") for r in alarm["reasons"]
    )
    folder = Path(
        mlflow.artifacts.download_artifacts(run_id=alarm["run_id"], artifact_path="monitor")
    )
    judged = json.loads((folder / "assessment.json").read_text())
    assert judged["rates"]["pii_leak_rate"]["flagged"] == WINDOW
    assert "| pii_leak_rate | rate increase 1 |" in (folder / "checks.md").read_text()
    if pushgateway_if_installed:
        pushed = httpx.get(f"{pushgateway_if_installed}/metrics").text
        labels = f'instance="",job="attnops-monitor",model="{NAME}",version="1"'
        assert f"attnops_monitor_pii_leak_rate{{{labels}}} 1" in pushed
