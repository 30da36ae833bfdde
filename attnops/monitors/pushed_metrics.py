"""The monitor's verdict on a window as Prometheus gauges, pushed to a Pushgateway.

The monitor runs as a short batch job (a Prefect flow run), so Prometheus cannot scrape it;
it pushes instead. Each push replaces the whole group `{job="attnops-monitor", model=...}`,
so the gauges always describe the newest judged window of the model's champion. A new
champion without a full window yet has no verdict: the monitor then clears the group, so
the old champion's alarm does not stand for it. Prometheus scrapes the Pushgateway with
`honor_labels: true` to keep those two labels (infra/prometheus/prometheus.yml).

The names are a contract of the debug dashboard and the drift alerts, checked by
tests/unit/test_infra.py like the server's own metrics.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway

from attnops.monitors.drift import SCORE_CAP
from attnops.monitors.generation_assessment import GenerationAssessment
from attnops.monitors.reference import WindowAssessment
from attnops.settings import service_timeout_s

PUSH_JOB = "attnops-monitor"


class MonitorMetrics:
    """Gauges of one monitoring run; `record` a window, then `push` them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.drift_score = Gauge(
            "attnops_monitor_drift_score",
            "Drift statistic of each check over its calibrated threshold: above 1 is drift",
            ["version", "check"],
            registry=r,
        )
        self.alarm = Gauge(
            "attnops_monitor_alarm",
            "1 when the newest judged window raised an alarm (drift or unsupported assertions)",
            ["version"],
            registry=r,
        )
        self.estimated_accuracy = Gauge(
            "attnops_monitor_estimated_accuracy",
            "Label-free accuracy estimate of the window (bound: estimate, low, high)",
            ["version", "bound"],
            registry=r,
        )
        self.unsupported_rate = Gauge(
            "attnops_monitor_unsupported_assertion_rate",
            "Share of the window answered confidently far from the reference",
            ["version"],
            registry=r,
        )
        self.hallucination_rate = Gauge(
            "attnops_monitor_hallucination_rate",
            "Share of the window's scored outputs the hallucination detector flags (generation; "
            "source: window or reference)",
            ["version", "source"],
            registry=r,
        )
        self.pii_leak_rate = Gauge(
            "attnops_monitor_pii_leak_rate",
            "Share of the window's outputs holding PII their own input lacks (generation)",
            ["version"],
            registry=r,
        )
        self.window_records = Gauge(
            "attnops_monitor_window_records",
            "Requests in the judged window",
            ["version"],
            registry=r,
        )
        self.last_run = Gauge(
            "attnops_monitor_last_run_timestamp_seconds",
            "When the monitor last judged a window (Unix time); stale means no monitoring",
            registry=r,
        )

    def record(self, version: str, assessment: WindowAssessment) -> None:
        for check in assessment.drift.checks:
            self.drift_score.labels(version, check.name).set(min(check.score, SCORE_CAP))
        self.alarm.labels(version).set(float(assessment.alarm))
        estimate = assessment.estimate
        for bound, value in (
            ("estimate", estimate.accuracy),
            ("low", estimate.accuracy_low),
            ("high", estimate.accuracy_high),
        ):
            self.estimated_accuracy.labels(version, bound).set(value)
        self.unsupported_rate.labels(version).set(assessment.unsupported.rate)
        self.window_records.labels(version).set(assessment.n)
        self.last_run.set_to_current_time()

    def record_generation(self, version: str, assessment: GenerationAssessment) -> None:
        """A generative version's window: its checks, alarm and output rates."""
        for check in assessment.drift.checks:
            self.drift_score.labels(version, check.name).set(min(check.score, SCORE_CAP))
        self.alarm.labels(version).set(float(assessment.alarm))
        if assessment.hallucinations.judged:
            self.hallucination_rate.labels(version, "window").set(assessment.hallucinations.rate)
        self.hallucination_rate.labels(version, "reference").set(
            assessment.reference_hallucinations.rate
        )
        if assessment.pii_leaks.judged:
            self.pii_leak_rate.labels(version).set(assessment.pii_leaks.rate)
        self.window_records.labels(version).set(assessment.n)
        self.last_run.set_to_current_time()

    def push(self, url: str, model: str) -> None:
        """Replace the model's group on the Pushgateway at `url` with these gauges."""
        _call_gateway(push_to_gateway, url, model, registry=self.registry)


def clear_pushed(url: str, model: str) -> None:
    """Remove the model's group from the Pushgateway at `url`: no verdict stands."""
    _call_gateway(delete_from_gateway, url, model)


def _call_gateway(call: Callable, url: str, model: str, **kwargs) -> None:
    """Run a prometheus_client gateway call on the model's group.

    Raises:
        OSError: the Pushgateway did not answer or failed (5xx); worth a retry.
        ValueError: it refused the request (4xx); a retry would be refused too.
    """
    where = f"the Pushgateway at {url} (ATTNOPS_PUSHGATEWAY_URL)"
    timeout_s = service_timeout_s()  # ATTNOPS_SERVICE_TIMEOUT_S
    try:
        call(url, job=PUSH_JOB, grouping_key={"model": model}, timeout=timeout_s, **kwargs)
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            raise ValueError(f"{where} refused the monitor's metrics: {exc}") from None
        raise OSError(f"{where} failed: {exc}") from exc
    except OSError as exc:
        raise OSError(f"could not reach {where}: {exc}") from exc
