"""Traffic for a generation server: tickets with their articles, corrected replies as feedback.

The generative twin of `attnops.demo.traffic`: tickets (with the article of their intent,
old or changed knowledge base) go to `POST /generate` concurrently, each from a simulated
customer whose key keeps it on one version while a canary runs; corrected replies go back
through `POST /feedback`, as a support team's edits would. Replies to tickets about a
changed policy are read for the numbers they state that their input lacks, and for terms of
the old articles.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from attnops.demo.ticket_reply_banks import POLICIES
from attnops.demo.traffic import canary_serving, check_server
from attnops.demo.withdrawn_articles import unsupported_numbers

REQUEST_TIMEOUT_S = 300.0
"""A CPU server under a full batch takes tens of seconds per reply: wait, do not fail."""


@dataclass
class ReplyTraffic:
    """What a batch of tickets got back."""

    sent: int = 0
    errors: int = 0
    routes: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    started_ts: float = 0.0
    """time.time() when the first ticket went out."""
    replies: dict[str, dict] = field(default_factory=dict)
    """request_id -> the ticket's row (ticket, article, intent, ...) with its `output`."""

    def changed_replies(self) -> tuple[int, list[str], int]:
        """Replies to tickets the knowledge-base change touched (`changed` rows): how many,
        those stating a number their ticket and article lack, how many quote an old term."""
        rows = [row for row in self.replies.values() if row.get("changed")]
        invented = [
            row["output"]
            for row in rows
            if unsupported_numbers(row["output"], row["ticket"] + "\n" + row["article"])
        ]
        old = sum(
            any(_mentions(row["output"], term) for term in POLICIES[row["intent"]].terms.values())
            for row in rows
        )
        return len(rows), invented, old

    def summary(self) -> str:
        p95 = float(np.percentile(self.latency_ms, 95)) if self.latency_ms else float("nan")
        return (
            f"{self.sent} requests ({self.errors} errors) in {self.seconds:.0f} s, p95 "
            f"{p95 / 1000:.1f} s, routes {self.routes}"
        )


def _mentions(text: str, value: str) -> bool:
    """`value` standing alone in `text`: "$12" is not in "$124.99", nor "14 days" in "114 days"."""
    return re.search(rf"(?<![\w$#.]){re.escape(value)}(?!\w|\.\d)", text) is not None


async def send_tickets(
    url: str,
    rows: Sequence[dict],
    *,
    seed: int,
    concurrency: int = 8,
    customers: int = 1000,
) -> ReplyTraffic:
    """Send each row's ticket (`ticket`, `article`) to `url`'s `/generate`.

    Args:
        rows: Ticket rows (`ticket_replies` or `ticket_replies_changed` generators).
        seed: Draws the customer of each ticket (its sticky routing key).
        concurrency: Requests in flight at once (the server batches them).
        customers: Distinct routing keys.
    """
    rng = np.random.default_rng(seed)
    keys = [f"customer-{k}" for k in rng.integers(0, customers, len(rows))]
    result = ReplyTraffic(started_ts=time.time())
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(client: httpx.AsyncClient, row: dict, key: str) -> None:
        async with gate:
            sent = time.perf_counter()
            body = {"source": row["ticket"], "context": row["article"], "key": key}
            response = await client.post("/generate", json=body)
            result.sent += 1
            if response.status_code != 200:
                result.errors += 1
                return
            result.latency_ms.append((time.perf_counter() - sent) * 1000)
            reply = response.json()
            result.routes[reply["route"]] = result.routes.get(reply["route"], 0) + 1
            result.replies[reply["request_id"]] = {**row, "output": reply["output"]}

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        await check_server(client, url)
        await asyncio.gather(*(one(client, row, key) for row, key in zip(rows, keys, strict=True)))
    result.seconds = time.perf_counter() - started
    return result


def send(url: str, rows: Sequence[dict], **kwargs) -> ReplyTraffic:
    """`send_tickets` from synchronous code."""
    return asyncio.run(send_tickets(url, rows, **kwargs))


def send_corrections(url: str, references: dict[str, str]) -> int:
    """Post each corrected reply (request_id -> reply) to `/feedback`; returns how many the
    server recorded."""
    recorded = 0
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for request_id, reference in references.items():
            response = client.post(
                "/feedback", json={"request_id": request_id, "reference": reference}
            )
            response.raise_for_status()
            recorded += int(response.json()["recorded"])
    return recorded


def wait_until_scored(url: str, timeout_s: float = 600.0) -> None:
    """Until the server at `url` has logged every answered request and its detector has
    scored every logged reply (the monitor and the canary judge scored replies only)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready = httpx.get(f"{url}/ready", timeout=10).json()
        if ready["log_pending"] == 0 and ready["scoring_backlog"] == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"after {timeout_s:g} s the server still has {ready['log_pending']} requests to "
                f"log and {ready['scoring_backlog']} replies to score"
            )
        time.sleep(0.5)


class CanaryTickets:
    """Customers in the background: while the server has a canary, tickets keep coming.

    `release` waits until both versions have enough scored replies; in the demo nothing
    else sends requests meanwhile. `make_rows(n, seed)` draws each batch, and the next
    batch waits until the server has scored this one: the detector, not the decoder, is
    what the release waits for, and a backlog of unscored replies only delays its verdict.
    """

    def __init__(self, url: str, make_rows: Callable[[int, int], list[dict]], *, batch: int = 16):
        self.url, self.make_rows, self.batch = url, make_rows, batch
        self.sent = 0
        self.routes: dict[str, int] = {}
        self.seen_at: float | None = None
        """perf_counter() when the canary first answered: the canary phase's start."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="canary-tickets")

    def __enter__(self) -> CanaryTickets:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_S)

    def _run(self) -> None:
        seed = 1000
        while not self._stop.is_set():
            if not canary_serving(self.url):
                self._stop.wait(0.5)
                continue
            if self.seen_at is None:
                self.seen_at = time.perf_counter()
            seed += 1
            result = send(self.url, self.make_rows(self.batch, seed), seed=seed)
            self.sent += result.sent
            for route, n in result.routes.items():
                self.routes[route] = self.routes.get(route, 0) + n
            wait_until_scored(self.url)
