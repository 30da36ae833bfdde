"""The loop around the server: release (promote, roll back), monitor, guarded retrain.

Real MLflow, real Prefect, a real server on loopback with simulated customers; tiny
random models, so the release limits that judge model quality are opened up here (the
checks themselves are unit-tested in tests/unit/test_canary.py).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import mlflow
import pytest
import yaml

from attnops.demo.traffic import CanaryTraffic, simulate, wait_for_log
from attnops.flows.cli import main
from attnops.flows.gate import gate
from attnops.flows.monitor import monitor
from attnops.flows.release import release
from attnops.flows.retrain import retrain
from attnops.flows.train import train
from attnops.models import aliases
from tests.integration.serving_fixtures import ADMIN_TOKEN, client, running_server, serving_spec

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]
NAME = "tiny-tickets"
LENIENT_RELEASE = {
    "canary_window": 40,
    "timeout_s": 120,
    "max_unsupported_assertion_increase": 1.0,
    "max_accuracy_drop": 1.0,
    "max_latency_increase": 3.0,
}


def _spec(demo_dir, folder, **sections) -> str:
    path = serving_spec(demo_dir, folder)
    raw = yaml.safe_load(Path(path).read_text())
    raw["release"] = LENIENT_RELEASE
    raw["monitoring"] = {"window_size": 150, "bootstrap_resamples": 300}
    raw.update(sections)
    Path(path).write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch, demo_dir):
    monkeypatch.setenv("ATTNOPS_HOME", str(tmp_path / ".attnops"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ATTNOPS_ADMIN_TOKEN", ADMIN_TOKEN)
    return tmp_path


def _tags(version: str) -> dict[str, str]:
    return client().get_model_version(NAME, version).tags


def test_first_release_promotes_then_a_canary_is_promoted_on_live_evidence_and_rolled_back(
    home, demo_dir, capsys
):
    path = _spec(demo_dir, home)
    v1 = train(path).version
    assert gate(path, candidate=v1).passed
    first = release(path, candidate=v1)
    assert first["promoted"] and "first champion" in first["reasons"]
    assert aliases.version_of(client(), NAME, aliases.CHAMPION) == "1"

    v2 = train(path).version
    with running_server(path) as url:
        with pytest.raises(ValueError, match="has not been through the gate"):
            release(path, candidate=v2)
        assert gate(path, candidate=v2).passed
        with CanaryTraffic(url, batch=40) as traffic:
            outcome = release(path, candidate=v2)
        assert traffic.sent >= 40
        assert outcome["promoted"], outcome["reasons"]
        served = httpx.get(f"{url}/ready").json()
        assert (served["champion"], served["canary"]) == ("2", None)

        c = client()
        assert aliases.version_of(c, NAME, aliases.CHAMPION) == "2"
        assert aliases.version_of(c, NAME, aliases.PREVIOUS) == "1"
        assert aliases.version_of(c, NAME, aliases.CANARY) is None
        assert _tags("2")["attnops.release"] == "promoted"
        files = {a.path for a in c.list_artifacts(c.get_model_version(NAME, "2").run_id, "release")}
        assert {"release/release.json", "release/canary_vs_champion.html"} <= files
        evidence = mlflow.artifacts.load_dict(
            f"runs:/{c.get_model_version(NAME, '2').run_id}/release/release.json"
        )
        assert {ch["name"] for ch in evidence["checks"]} >= {
            "error_rate",
            "latency_ms_p95",
            "unsupported_assertions",
            "accuracy",
            "pii_share",
        }
        assert "Release: promoted" in c.get_model_version(NAME, "2").description

        assert main(["rollback", "--spec", path]) == 0
        assert "champion is v1 again (v2 rolled back)" in capsys.readouterr().out
        assert aliases.version_of(c, NAME, aliases.CHAMPION) == "1"
        assert _tags("2")["attnops.release"] == "rolled_back"
        assert httpx.get(f"{url}/ready").json()["champion"] == "1"
    assert main(["rollback", "--spec", path]) == 1  # nothing left to roll back to
    # v2 is still the challenger: a plain release must not bring it back unasked.
    with pytest.raises(ValueError, match=r"v2 \(challenger\) was rolled back.*--version 2"):
        release(path)


def test_a_canary_whose_window_never_fills_is_rolled_back(home, demo_dir):
    path = _spec(demo_dir, home, release={**LENIENT_RELEASE, "timeout_s": 3})
    for _ in range(2):
        version = train(path).version
        assert gate(path, candidate=version).passed
    client().set_registered_model_alias(NAME, aliases.CHAMPION, "1")
    with running_server(path) as url:
        outcome = release(path, candidate="2")  # nobody sends traffic
        assert not outcome["promoted"] and "did not fill" in outcome["reasons"]
        assert httpx.get(f"{url}/ready").json()["canary"] is None
    assert aliases.version_of(client(), NAME, aliases.CANARY) is None
    assert aliases.version_of(client(), NAME, aliases.CHAMPION) == "1"
    assert _tags("2")["attnops.release"] == "rolled_back"


def test_monitor_alarms_on_drift_and_retrain_runs_once_per_event_within_its_guards(
    home, demo_dir, pushgateway_if_installed, monkeypatch
):
    pushgateway = pushgateway_if_installed
    if pushgateway:
        monkeypatch.setenv("ATTNOPS_PUSHGATEWAY_URL", pushgateway)
    path = _spec(demo_dir, home, retrain={"cooldown_s": 3600, "min_new_labels": 100, "epochs": 1})
    train(path)
    client().set_registered_model_alias(NAME, aliases.CHAMPION, "1")
    with running_server(path) as url:
        assert monitor(path)["status"] == "waiting"
        simulate(url, scenario="normal", n=150, seed=1, label_share=0.0)
        wait_for_log(url)
        calm = monitor(path)
        assert calm["status"] in ("ok", "alarm")  # a 5% false-alarm rate is allowed
        assert monitor(path)["status"] == "stale", "the same window is judged once"
        early = retrain(path, event_id="too-few-labels")
        assert early["status"] == "skipped" and "only 0 labelled requests" in early["reason"]

        simulate(url, scenario="pii_surge", n=150, seed=2, label_share=0.8)
        wait_for_log(url)
        alarm = monitor(path)
        assert alarm["status"] == "alarm" and alarm["event_id"], alarm
        assert any("has_pii" in r for r in alarm["reasons"]), alarm["reasons"]
        run = mlflow.get_run(alarm["run_id"])
        assert run.data.tags["attnops.alarm"] == "true"
        assert run.data.metrics["window_records"] == 150
        artifacts = client().list_artifacts(run.info.run_id, "monitor")
        assert "monitor/drift.html" in {a.path for a in artifacts}
        if pushgateway:
            pushed = httpx.get(f"{pushgateway}/metrics").text  # what Prometheus will scrape
            assert (
                f'attnops_monitor_alarm{{instance="",job="attnops-monitor",model="{NAME}",'
                'version="1"} 1' in pushed
            )
            assert 'check="has_pii"' in pushed

        with CanaryTraffic(url, batch=40):
            done = retrain(path, event_id=alarm["event_id"])
        assert done["status"] in ("promoted", "rolled_back", "blocked"), done
        assert done["version"] == "2"
        run = mlflow.get_run(client().get_model_version(NAME, "2").run_id)
        assert run.data.tags["attnops.trigger"] == "retrain"
        assert run.data.tags["attnops.event_id"] == alarm["event_id"]
        # Warm-started from v1's weights, the lineage still names the base model.
        assert _tags("2")["attnops.base_model"] == _tags("1")["attnops.base_model"]
        again = retrain(path, event_id=alarm["event_id"])
        assert again["status"] == "skipped" and "already started a retrain" in again["reason"]
        other = retrain(path, event_id="another-event")
        assert other["status"] == "skipped" and "cooldown" in other["reason"]
        champion = aliases.version_of(client(), NAME, aliases.CHAMPION)
        if champion == "2":  # promoted: v1's verdict must not stand for v2
            assert monitor(path)["status"] == "waiting"
            if pushgateway:
                assert f'model="{NAME}"' not in httpx.get(f"{pushgateway}/metrics").text
    assert _tags(champion)["attnops.retrain_trigger"].startswith("skipped: cooldown")
