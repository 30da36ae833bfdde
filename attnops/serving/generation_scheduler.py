"""Who decodes next: the waiting queue of generation requests and the KV-budget admission rule.

Pure bookkeeping, no torch: the engine's decode thread asks `admit` at every step boundary
which waiting requests may join the running batch. A request joins when a batch row is free
and the batch's worst-case KV cache (every row padded to the longest, every row reaching its
`max_new_tokens`) stays within the budget; otherwise it waits, first come first served (a
long request at the head is never overtaken, so it cannot starve). A request that could not
fit even in an empty batch, or one arriving at a full queue, is refused at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


class Overloaded(Exception):
    """The server cannot take the request now (HTTP 503); the message says why."""


@dataclass(eq=False)
class Pending:
    """One request, from arrival to its last token. The engine owns `slot` (its batch state)."""

    prompt_ids: list[int]
    prefix_len: int
    """Leading prompt tokens shared with other requests (instruction + article): cached."""
    max_new_tokens: int
    deadline: float
    """time.monotonic() after which the request is dropped with a timeout."""
    sink: object
    """Receives the request's events (see `generation_engine.EventSink`)."""
    arrived: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Row:
    """A running sequence as admission sees it."""

    cached_tokens: int
    remaining_tokens: int


def worst_case_tokens(rows: Sequence[Row]) -> int:
    """Token slots the batch's KV cache can grow to: rows x (longest row + longest remainder).

    Rows are left-padded to the longest, and every row grows by one per step until the last
    one finishes, so this bounds the padded cache until then.
    """
    if not rows:
        return 0
    width = max(r.cached_tokens for r in rows) + max(r.remaining_tokens for r in rows)
    return len(rows) * width


class Scheduler:
    """The waiting queue and the admission rule (thread-safe).

    Args:
        budget_tokens: KV-cache token slots the running batch may use (budget / bytes per token).
        max_rows: sequences decoded together.
        max_queue: requests allowed to wait; one more is refused.
    """

    def __init__(self, *, budget_tokens: int, max_rows: int, max_queue: int) -> None:
        self.budget_tokens, self.max_rows, self.max_queue = budget_tokens, max_rows, max_queue
        self._waiting: deque[Pending] = deque()
        self._lock = threading.Lock()
        self.arrived = threading.Event()
        """Set when a request arrives: wakes an idle decode loop."""

    def __len__(self) -> int:
        return len(self._waiting)

    def submit(self, request: Pending) -> None:
        """Queue `request`.

        Raises:
            Overloaded: the queue is full, or the request alone exceeds the KV budget.
        """
        alone = worst_case_tokens([Row(len(request.prompt_ids), request.max_new_tokens)])
        if alone > self.budget_tokens:
            raise Overloaded(
                f"this request needs up to {alone} KV-cache token slots (prompt "
                f"{len(request.prompt_ids)} + max_new_tokens {request.max_new_tokens}), more "
                f"than the whole budget of {self.budget_tokens}; lower max_new_tokens or raise "
                "generation.serving.kv_budget_mb"
            )
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise Overloaded(
                    f"the server is busy: {len(self._waiting)} requests are already waiting "
                    f"(generation.serving.max_queue {self.max_queue}); retry in a few seconds"
                )
            self._waiting.append(request)
        self.arrived.set()

    def admit(self, running: Sequence[Row]) -> list[Pending]:
        """Waiting requests that join the running batch now, in arrival order."""
        rows = list(running)
        joining: list[Pending] = []
        with self._lock:
            while self._waiting and len(rows) < self.max_rows:
                head = self._waiting[0]
                grown = [*rows, Row(len(head.prompt_ids), head.max_new_tokens)]
                if worst_case_tokens(grown) > self.budget_tokens:
                    break  # the head waits for rows to finish; nothing overtakes it
                joining.append(self._waiting.popleft())
                rows = grown
            if not self._waiting:
                self.arrived.clear()
        return joining

    def expire(self, now: float) -> list[Pending]:
        """Remove and return the waiting requests whose deadline has passed."""
        with self._lock:
            late = [r for r in self._waiting if r.deadline <= now]
            for request in late:
                self._waiting.remove(request)
        return late

    def drain(self) -> list[Pending]:
        """Remove and return everything waiting (server shutdown)."""
        with self._lock:
            left = list(self._waiting)
            self._waiting.clear()
        return left
