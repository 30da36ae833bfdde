"""Who decodes next: the waiting queue of generation requests and the KV-budget admission rule.

Pure bookkeeping, no torch: the engine's decode thread asks `admit` at every step boundary
which waiting requests may join the running batch. A request joins when a batch row is free
and the batch's worst-case KV cache (every row padded to the longest, every row reaching its
`max_new_tokens`) stays within the budget; otherwise it waits, first come first served (a
long request at the head is never overtaken, so it cannot starve). A request that could not
fit even in an empty batch, or one arriving at a full queue, is refused at once. While a
canary is served its engine and the champion's share one budget (`KvBudget`).
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


class KvBudget:
    """One KV-cache budget shared by several engines (the champion's and the canary's).

    Each engine's scheduler reserves its batch's worst case here at every step boundary and
    admits only what fits beside the others' reservations. An engine whose next request
    waits for room says so, and the others admit nothing new until it got in: their rows
    finish, room appears, and neither engine's queue can starve the other's.
    """

    def __init__(self) -> None:
        self._reserved: dict[int, int] = {}
        self._waiting: set[int] = set()
        self._lock = threading.Lock()

    def others(self, owner: object) -> tuple[int, bool]:
        """Bytes reserved by the other engines, and whether one of them waits for room."""
        with self._lock:
            reserved = sum(n for key, n in self._reserved.items() if key != id(owner))
            return reserved, bool(self._waiting - {id(owner)})

    def update(self, owner: object, reserved_bytes: int, *, waiting: bool) -> None:
        with self._lock:
            self._reserved[id(owner)] = reserved_bytes
            (self._waiting.add if waiting else self._waiting.discard)(id(owner))

    def release(self, owner: object) -> None:
        """The engine stopped: its reservation and its claim go."""
        with self._lock:
            self._reserved.pop(id(owner), None)
            self._waiting.discard(id(owner))


class Scheduler:
    """The waiting queue and the admission rule (thread-safe).

    Args:
        budget_tokens: KV-cache token slots the running batch may use (budget / bytes per token).
        max_rows: sequences decoded together.
        max_queue: requests allowed to wait; one more is refused.
        shared: the budget when other engines draw on it too (`KvBudget`); None: this
            scheduler has the whole budget to itself.
        bytes_per_token: KV bytes of one token slot of this engine's model (for `shared`).
    """

    def __init__(
        self,
        *,
        budget_tokens: int,
        max_rows: int,
        max_queue: int,
        shared: KvBudget | None = None,
        bytes_per_token: int = 1,
    ) -> None:
        self.budget_tokens, self.max_rows, self.max_queue = budget_tokens, max_rows, max_queue
        self.shared, self.bytes_per_token = shared, bytes_per_token
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
        others, other_waits = (0, False) if self.shared is None else self.shared.others(self)
        budget = self.budget_tokens - others // self.bytes_per_token
        waits_for_room = False
        with self._lock:
            while self._waiting and len(rows) < self.max_rows and not other_waits:
                head = self._waiting[0]
                grown = [*rows, Row(len(head.prompt_ids), head.max_new_tokens)]
                if worst_case_tokens(grown) > budget:
                    waits_for_room = True
                    break  # the head waits for rows to finish; nothing overtakes it
                joining.append(self._waiting.popleft())
                rows = grown
            if not self._waiting or waits_for_room or other_waits:
                # Nothing can join before rows finish here or in another engine: an idle
                # decode loop looks again after its idle wait instead of spinning.
                self.arrived.clear()
        if self.shared is not None:
            reserved = worst_case_tokens(rows) * self.bytes_per_token
            self.shared.update(self, reserved, waiting=waits_for_room)
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
