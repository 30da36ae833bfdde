"""The monitor's gauges on a real Pushgateway: what Prometheus, the debug dashboard and the
drift alerts read."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Summary, push_to_gateway
from prometheus_client.parser import text_string_to_metric_families

from attnops.monitors.pushed_metrics import PUSH_JOB, MonitorMetrics, clear_pushed
from attnops.monitors.reference import ReferenceProfile
from attnops.spec import MonitoringSpec
from tests.integration.conftest import running_pushgateway
from tests.integration.serving_fixtures import free_port
from tests.unit.test_reports import record_frame


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return ReferenceProfile(
        record_frame(1), {"out_of_scope_threshold": 0.9}, MonitoringSpec(window_size=200)
    )


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """(series name, labels) -> value of everything the Pushgateway exposes for attnops."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("attnops_monitor_")
    }


def series(found: dict, name: str, **labels: str) -> float:
    wanted = {("job", PUSH_JOB), ("instance", ""), *labels.items()}
    matches = [v for (n, got), v in found.items() if n == name and wanted <= got]
    assert len(matches) == 1, (name, labels, sorted(k for k in found if k[0] == name))
    return matches[0]


def test_a_drifted_window_is_pushed_per_check_and_replaces_the_previous_version(
    pushgateway, profile
):
    drifted = profile.assess(record_frame(2, shifted=True))
    assert drifted.alarm
    gauges = MonitorMetrics()
    gauges.record("3", drifted)
    gauges.push(pushgateway, "tickets")

    found = scrape(pushgateway)
    assert series(found, "attnops_monitor_alarm", model="tickets", version="3") == 1
    for check in drifted.drift.checks:
        score = series(
            found, "attnops_monitor_drift_score", model="tickets", version="3", check=check.name
        )
        assert score == pytest.approx(min(check.score, 1e6))
        assert (score > 1) == check.drifted
    estimate = {
        bound: series(
            found, "attnops_monitor_estimated_accuracy", model="tickets", version="3", bound=bound
        )
        for bound in ("low", "estimate", "high")
    }
    assert estimate["low"] <= estimate["estimate"] <= estimate["high"]
    assert series(found, "attnops_monitor_window_records", model="tickets", version="3") == 200
    assert series(found, "attnops_monitor_last_run_timestamp_seconds", model="tickets") > 0

    newer = MonitorMetrics()  # a new champion's first judged window
    window = profile.assess(record_frame(3))
    newer.record("4", window)
    newer.push(pushgateway, "tickets")
    found = scrape(pushgateway)
    versions = {
        dict(labels)["version"]
        for name, labels in found
        if name == "attnops_monitor_alarm" and ("model", "tickets") in labels
    }
    assert versions == {"4"}, "the old champion's gauges must not linger"
    assert series(found, "attnops_monitor_alarm", model="tickets", version="4") == window.alarm


def push_as_v1(url: str, window, models: tuple[str, ...]) -> None:
    for model in models:
        gauges = MonitorMetrics()
        gauges.record("1", window)
        gauges.push(url, model)


def test_another_model_keeps_its_own_group(pushgateway, profile):
    push_as_v1(pushgateway, profile.assess(record_frame(4)), ("model-a", "model-b"))
    found = scrape(pushgateway)
    for model in ("model-a", "model-b"):
        assert series(found, "attnops_monitor_window_records", model=model, version="1") == 200


def test_an_unreachable_pushgateway_is_named_in_the_error(profile):
    gauges = MonitorMetrics()
    gauges.record("1", profile.assess(record_frame(5)))
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OSError, match=f"Pushgateway at {url} .ATTNOPS_PUSHGATEWAY_URL."):
        gauges.push(url, "tickets")


def test_clearing_removes_only_that_models_verdict(pushgateway, profile):
    push_as_v1(pushgateway, profile.assess(record_frame(6)), ("retired", "kept"))
    clear_pushed(pushgateway, "retired")
    models = {dict(labels).get("model") for _, labels in scrape(pushgateway)}
    assert "retired" not in models and "kept" in models
    clear_pushed(pushgateway, "never-pushed")  # nothing to clear is not an error


def test_a_refused_push_is_not_retried_as_transient(profile):
    """A gateway refuses metrics whose type clashes with another group's (400): that is a
    ValueError, which the monitor's I/O task does not retry, unlike an OSError."""
    with running_pushgateway() as url:  # its own: the clash must come first
        other = CollectorRegistry()
        Summary("attnops_monitor_window_records", "not a gauge", registry=other).observe(1)
        push_to_gateway(url, job="someone-else", registry=other)
        gauges = MonitorMetrics()
        gauges.record("1", profile.assess(record_frame(7)))
        with pytest.raises(ValueError, match="refused the monitor's metrics: HTTP Error 400"):
            gauges.push(url, "clashing")
