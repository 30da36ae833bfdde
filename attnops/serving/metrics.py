"""Prometheus metrics of the inference service (one registry per app, so tests can run many)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    Summary,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the engine loads torch and MLflow; the metrics need neither
    from attnops.serving.engine import Answer

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class ServingMetrics:
    """Every metric the server exports; names are the contract of the dashboards and alerts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc.: OOM watch
        self.requests = Counter(
            "attnops_requests", "Answered inputs", ["route", "version"], registry=r
        )
        self.errors = Counter(
            "attnops_request_errors",
            "Rejected or failed requests by HTTP status, reason and route ('none' before routing)",
            ["status", "reason", "route"],
            registry=r,
        )
        self.latency = Histogram(
            "attnops_request_latency_seconds",
            "Arrival to answer, per input",
            ["route", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokens = Histogram(
            "attnops_input_tokens",
            "Tokens per input before truncation",
            ["version"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.truncated = Counter(
            "attnops_truncated_inputs", "Inputs cut to model.max_length", ["version"], registry=r
        )
        self.confidence = Histogram(
            "attnops_prediction_confidence",
            "Confidence of the predicted label",
            ["version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.unsupported = Counter(
            "attnops_unsupported_assertions",
            "Confident answers on inputs far from the reference",
            ["version"],
            registry=r,
        )
        self.attention_entropy = Summary(
            "attnops_attention_entropy",
            "Normalised attention entropy (0-1) per head, observed on the sampled requests",
            ["version", "layer", "head"],
            registry=r,
        )
        self.pii_hits = Counter(
            "attnops_pii_hits", "PII entities redacted from logged inputs", ["entity"], registry=r
        )
        self.batch_size = Histogram(
            "attnops_batch_size",
            "Inputs per forward pass",
            ["route"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.log_pending = Gauge(
            "attnops_inference_log_pending", "Records waiting to be written", registry=r
        )
        self.log_write_errors = Gauge(
            "attnops_inference_log_write_errors", "Failed inference-log writes", registry=r
        )
        self.served = Gauge(
            "attnops_served_version",
            "1 for the version each route serves",
            ["route", "version"],
            registry=r,
        )
        self.reloads = Counter(
            "attnops_reloads", "Alias reloads by outcome", ["outcome"], registry=r
        )
        r.register(ThreadCpu())

    def publish(self, served: dict[str, str | None]) -> None:
        """The version each route serves now (route -> version, None for an empty route)."""
        self.served.clear()
        for route, version in served.items():
            if version is not None:
                self.served.labels(route, version).set(1)

    def observe(self, route: str, version: str, a: Answer, latency_ms: float) -> None:
        """One answered input (an attention entropy computed later: `observe_entropy`)."""
        self.requests.labels(route, version).inc()
        self.latency.labels(route, version).observe(latency_ms / 1000)
        self.tokens.labels(version).observe(a.features["n_tokens"])
        self.confidence.labels(version).observe(a.confidence)
        if a.features["truncated"]:
            self.truncated.labels(version).inc()
        if a.unsupported:
            self.unsupported.labels(version).inc()
        if a.attention_entropy is not None:
            self.observe_entropy(version, a.attention_entropy)

    def observe_entropy(self, version: str, entropy: np.ndarray) -> None:
        """The (layers, heads) attention entropy of one sampled input."""
        for (layer, head), value in np.ndenumerate(entropy):
            self.attention_entropy.labels(version, str(layer), str(head)).observe(value)


class ThreadCpu(Collector):
    """`attnops_thread_cpu_seconds_total{thread}`: where the server process's CPU goes.

    Per Python thread name, numbered pool suffixes dropped (`MainThread`: the event loop and
    request handling, `model`: the batches, `inference-log`: redaction, attention entropy and
    writes, `asyncio`: `to_thread` helpers), and `native` for the rest of the process's CPU
    time: threads Python did not start, i.e. torch's intra-op workers.
    """

    _POOL_SUFFIX = re.compile(r"_\d+$")

    def collect(self) -> Iterator[CounterMetricFamily]:
        seconds: dict[str, float] = {}
        for thread in threading.enumerate():
            try:
                used = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (AttributeError, OSError, TypeError):  # not POSIX, or the thread just ended
                continue
            name = self._POOL_SUFFIX.sub("", thread.name)
            seconds[name] = seconds.get(name, 0.0) + used
        # The process's CPU time includes that of threads that have ended: counted as native.
        seconds["native"] = max(0.0, time.process_time() - sum(seconds.values()))
        family = CounterMetricFamily(
            "attnops_thread_cpu_seconds", "CPU time by server thread", labels=["thread"]
        )
        for name, value in sorted(seconds.items()):
            family.add_metric([name], value)
        yield family
