"""Traffic simulator: realistic request streams against a running inference service.

Tickets come from the demo generator's scenarios (normal traffic or a drift scenario),
are sent concurrently with a sticky key per simulated customer, and the true label of a
sampled share is revealed afterwards through `/feedback`, as a labelling team would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from attnops.demo.tickets import generate_tickets


@dataclass
class TrafficResult:
    sent: int = 0
    errors: int = 0
    labelled: int = 0
    routes: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        p95 = float(np.percentile(self.latency_ms, 95)) if self.latency_ms else float("nan")
        return (
            f"{self.sent} requests ({self.errors} errors) in {self.seconds:.1f} s, p95 "
            f"{p95:.0f} ms, routes {self.routes}, {self.labelled} labels revealed"
        )


async def send_traffic(
    url: str,
    *,
    scenario: str = "normal",
    n: int = 500,
    seed: int = 0,
    concurrency: int = 8,
    label_share: float = 0.5,
    out_of_scope_share: float = 0.05,
    customers: int = 1000,
) -> TrafficResult:
    """Send `n` tickets of `scenario` to `url` and reveal the labels of `label_share` of them.

    Args:
        concurrency: requests in flight at once.
        customers: distinct sticky keys; each ticket belongs to a random customer, so the
            same customer always reaches the same version while a canary runs.
    """
    tickets = generate_tickets(
        n, seed=seed, scenario=scenario, out_of_scope_share=out_of_scope_share
    )
    rng = np.random.default_rng(seed)
    keys = [f"customer-{k}" for k in rng.integers(0, customers, n)]
    reveal = rng.random(n) < label_share
    result = TrafficResult()
    labels: dict[str, str] = {}
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with gate:
            sent = time.perf_counter()
            response = await client.post(
                "/predict", json={"text": tickets["text"].iat[i], "key": keys[i]}
            )
            result.sent += 1
            if response.status_code != 200:
                result.errors += 1
                return
            result.latency_ms.append((time.perf_counter() - sent) * 1000)
            body = response.json()
            result.routes[body["route"]] = result.routes.get(body["route"], 0) + 1
            if reveal[i]:
                labels[body["request_id"]] = str(tickets["intent"].iat[i])

    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        await check_server(client, url)
        await asyncio.gather(*(one(client, i) for i in range(n)))
        if labels:
            response = await client.post("/feedback", json={"labels": labels})
            response.raise_for_status()
            result.labelled = int(response.json()["recorded"])
    result.seconds = time.perf_counter() - started
    return result


async def check_server(client: httpx.AsyncClient, url: str) -> None:
    """One request first: no server means one sentence, not `n` connection errors."""
    try:
        await client.get("/health", timeout=10.0)
    except httpx.TransportError as exc:
        raise ConnectionError(
            f"no attnops server answers at {url} ({exc or type(exc).__name__}); start one "
            "with `attnops serve --spec SPEC`, or set serving.host/serving.port in the spec "
            "to where it runs"
        ) from None


def simulate(url: str, **kwargs) -> TrafficResult:
    """`send_traffic` from synchronous code."""
    return asyncio.run(send_traffic(url, **kwargs))


def canary_serving(url: str) -> bool:
    """Whether the server at `url` routes part of its traffic to a canary now (`/ready`);
    False while it cannot tell."""
    try:
        return bool(httpx.get(f"{url}/ready", timeout=5).json().get("canary"))
    except (httpx.HTTPError, ValueError):
        return False


def wait_for_log(url: str, timeout_s: float = 120.0) -> None:
    """Until the server at `url` has written every answered request to its inference log."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/ready", timeout=5).json()["log_pending"] > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the inference log is still behind after {timeout_s:g} s")
        time.sleep(0.2)


class CanaryTraffic:
    """Customers in the background: while the server has a canary, traffic keeps flowing.

    `release` waits for the canary window to fill; in the demo and the tests nothing else
    sends requests meanwhile. Batches of `batch` tickets alternate between `scenarios`.
    """

    def __init__(
        self,
        url: str,
        *,
        scenarios: tuple[str, ...] = ("new_product_line", "normal"),
        batch: int = 100,
        label_share: float = 0.5,
    ) -> None:
        self.url, self.scenarios, self.batch, self.label_share = url, scenarios, batch, label_share
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="canary-traffic")
        self.sent = 0

    def __enter__(self) -> CanaryTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        seed = 1000
        while not self._stop.is_set():
            if not canary_serving(self.url):
                self._stop.wait(0.2)
                continue
            seed += 1
            result = simulate(
                self.url,
                scenario=self.scenarios[seed % len(self.scenarios)],
                n=self.batch,
                seed=seed,
                label_share=self.label_share,
            )
            self.sent += result.sent
