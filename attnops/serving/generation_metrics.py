"""Prometheus metrics of the generation service: the shared ones plus what decoding adds.

Names are the contract of the dashboards and alerts, as in `metrics.py`. Per request: time
to first token (queueing included), prompt and generated tokens; per decode step: the
inter-token latency every running sequence saw; as gauges, read at each scrape: queue
length, batch occupancy, prefix-cache hit rate, KV memory in use, and the cost per 1,000
requests at the spec's price of the machine (uptime x $/hour over requests answered). Per
version, off the request path: outputs scored by the version's hallucination detector, those
it flagged, and outputs leaking PII their input did not hold.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from attnops.serving.metrics import TOKEN_BUCKETS, ServingMetrics

TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GenerationMetrics(ServingMetrics):
    """`ServingMetrics` plus the generation series (one registry per app)."""

    def __init__(self, cost_per_hour_usd: float) -> None:
        super().__init__()
        r = self.registry
        self.cost_per_hour_usd = cost_per_hour_usd
        self.started = time.monotonic()
        self.ttft = Histogram(
            "attnops_generation_ttft_seconds",
            "Arrival to first generated token (queueing included)",
            ["version"],
            buckets=TTFT_BUCKETS_S,
            registry=r,
        )
        self.inter_token = Histogram(
            "attnops_generation_inter_token_seconds",
            "Time between consecutive tokens of a sequence (one decode step)",
            buckets=ITL_BUCKETS_S,
            registry=r,
        )
        self.prompt_tokens = Histogram(
            "attnops_generation_prompt_tokens",
            "Prompt tokens per request",
            ["version"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "attnops_generation_output_tokens",
            "Generated tokens per request",
            ["version"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.generated = Counter(
            "attnops_generation_tokens", "Generated tokens", ["version"], registry=r
        )
        self.prefix_lookups = Counter(
            "attnops_generation_prefix_lookups",
            "Prefix-cache lookups by outcome",
            ["outcome"],
            registry=r,
        )
        self.queue_length = Gauge(
            "attnops_generation_queue_length", "Requests waiting for a batch row", registry=r
        )
        self.batch_occupancy = Gauge(
            "attnops_generation_batch_occupancy",
            "Running sequences over generation.serving.max_batch_rows",
            registry=r,
        )
        self.prefix_hit_rate = Gauge(
            "attnops_generation_prefix_cache_hit_rate",
            "Prefix-cache hits over lookups since start",
            registry=r,
        )
        self.kv_bytes = Gauge(
            "attnops_generation_kv_cache_bytes",
            "KV-cache memory in use: running batch (padding included) plus cached prefixes",
            registry=r,
        )
        self.cost_per_1k = Gauge(
            "attnops_generation_cost_per_1k_requests_usd",
            "Machine cost since start (generation.cost_per_hour_usd) per 1,000 answered requests",
            registry=r,
        )
        self.scored = Counter(
            "attnops_generation_scored_outputs",
            "Outputs scored by the version's hallucination detector (off the request path)",
            ["version"],
            registry=r,
        )
        self.hallucination_flags = Counter(
            "attnops_generation_hallucination_flags",
            "Scored outputs the version's detector flagged as hallucinated",
            ["version"],
            registry=r,
        )
        self.pii_leaks = Counter(
            "attnops_generation_pii_leaks",
            "Outputs holding PII that their own input did not hold",
            ["version"],
            registry=r,
        )
        self.scoring_backlog = Gauge(
            "attnops_generation_scoring_backlog",
            "Logged outputs waiting for their hallucination score",
            registry=r,
        )
        self._answered = 0

    def on_step(self, rows: int, seconds: float) -> None:
        """One decode step in which `rows` sequences each wrote a token."""
        for _ in range(rows):
            self.inter_token.observe(seconds)

    def finished(
        self,
        route: str,
        version: str,
        prompt_tokens: int,
        output_tokens: int,
        ttft_s: float,
        prefix_hit: bool | None,
    ) -> None:
        """One answered request; prefix_hit None when it had no shared prefix to look up."""
        self._answered += 1
        self.requests.labels(route, version).inc()
        self.ttft.labels(version).observe(ttft_s)
        self.prompt_tokens.labels(version).observe(prompt_tokens)
        self.output_tokens.labels(version).observe(output_tokens)
        self.generated.labels(version).inc(output_tokens)
        if prefix_hit is not None:
            self.prefix_lookups.labels("hit" if prefix_hit else "miss").inc()

    def on_scored(self, version: str, flagged: bool) -> None:
        """One output scored by the detector (on the scoring thread)."""
        self.scored.labels(version).inc()
        if flagged:
            self.hallucination_flags.labels(version).inc()

    def on_leak(self, version: str, entities: list[str]) -> None:
        """One output leaking PII (on the log's writer thread)."""
        self.pii_leaks.labels(version).inc()

    def refresh(
        self,
        *,
        queue: int,
        rows: int,
        max_rows: int,
        kv_bytes: int,
        hit_rate: float,
        scoring_backlog: int = 0,
    ) -> None:
        """The gauges, read just before a scrape."""
        self.scoring_backlog.set(scoring_backlog)
        self.queue_length.set(queue)
        self.batch_occupancy.set(rows / max_rows)
        self.kv_bytes.set(kv_bytes)
        self.prefix_hit_rate.set(hit_rate)
        if self._answered:
            hours = (time.monotonic() - self.started) / 3600
            self.cost_per_1k.set(hours * self.cost_per_hour_usd / self._answered * 1000)
