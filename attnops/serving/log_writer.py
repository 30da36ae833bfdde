"""The buffered writer behind both inference logs: never on the request path, never dropping.

`submit` only appends to an in-memory queue; a daemon thread wakes every `flush_interval_s`
(sooner when `max_batch` records wait), turns the records into rows (redacting their texts)
and inserts the batch in one transaction. A failed write keeps the batch and retries, so a
locked or unreachable database delays records but never loses them; `close` writes
everything submitted before it returns. Subclasses say how records become rows (`_to_rows`)
and how rows are stored (`_insert`); the classification log (`log_store.InferenceLog`) and
the generation log (`generation_log_store.GenerationLog`) share the rest.

The writer's work (redaction, deferred scores) competes with the requests for the same
cores, so it may be bounded: with `max_cpu_share` it converts records a slice at a time and
after each slice sleeps until its CPU time is at most that share of one core's wall time,
at a lower scheduling priority (Linux: `nice_increment` on its own thread). It then lags
behind a burst of requests, and catches up afterwards; it never drops a record (`pending`
says how far behind it is), and `close` drains at full speed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

_WARN_EVERY_S = 60.0


class BufferedLogWriter:
    """Queue, writer thread, retries and drain on close; a mixin beside a log reader.

    The reader it is mixed with sets `self._engine` (SQLAlchemy) and `self._where` (the URL
    without password). Records need a `request_id`.

    Args:
        flush_interval_s: How often the writer thread writes what is waiting.
        max_batch: Wake the writer early once this many records wait.
        redact: Replace PII in texts by placeholders before storing (see `_to_rows`).
        on_pii: Called on the writer thread with the entity name of every PII hit found
            in an input (e.g. to count hits in a metric).
        max_cpu_share: At most this share of one core's time for the writer thread while
            serving (None: no bound).
        slice_records: Records converted between two checks of that share (with one).
        nice_increment: How much lower the writer thread's priority is (Linux; 0: same).
    """

    def _init_writer(
        self,
        *,
        flush_interval_s: float,
        max_batch: int,
        redact: bool,
        on_pii: Callable[[str], None] | None,
        name: str,
        max_cpu_share: float | None = None,
        slice_records: int = 16,
        nice_increment: int = 0,
    ) -> None:
        if flush_interval_s <= 0 or max_batch < 1 or slice_records < 1:
            raise ValueError(
                "need flush_interval_s > 0, max_batch >= 1 and slice_records >= 1, got "
                f"{flush_interval_s}, {max_batch}, {slice_records}"
            )
        if max_cpu_share is not None and not 0 < max_cpu_share <= 1:
            raise ValueError(f"max_cpu_share is a share of one core in (0, 1], got {max_cpu_share}")
        self.flush_interval_s, self.max_batch, self.redact = flush_interval_s, max_batch, redact
        self.max_cpu_share, self._slice, self._nice = max_cpu_share, slice_records, nice_increment
        self._paced_cpu_s = self._paced_at = self._paused_s = 0.0
        self._name = name
        # The subclass's module logger: warnings name the log they come from.
        self._logger = logging.getLogger(type(self).__module__)
        self._on_pii = on_pii
        self._queue: deque = deque()
        self._taken: list = []  # taken from the queue, not yet redacted
        self._rows: list[dict] = []  # redacted, not yet committed (kept across failed writes)
        # Ids submitted but not yet committed: feedback may name them before they are written.
        # Single set operations are atomic under the GIL (request thread adds, writer discards).
        self._unwritten: set[str] = set()
        self._count_lock = threading.Lock()
        self._submitted = self._written = self._duplicates = self._write_errors = 0
        self._wake, self._closing = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failing_since: float | None = None
        self._last_warning = 0.0

    # What a subclass provides.
    def _to_rows(self, records: Sequence) -> list[dict]:
        """Rows for `records` (on the writer thread; redacts when `self.redact`)."""
        raise NotImplementedError

    def _insert(self, conn, rows: list[dict]) -> list[dict]:
        """Insert the rows not already stored (a retried batch may be); return those."""
        raise NotImplementedError

    def _stored_ids(self, request_ids: Iterable[str]) -> set[str]:
        """Those of `request_ids` already in the log."""
        raise NotImplementedError

    def _committed(self, rows: list[dict]) -> None:
        """Called on the writer thread with the rows just committed (default: nothing)."""

    @property
    def submitted(self) -> int:
        """Records accepted by `submit`."""
        return self._submitted

    @property
    def written(self) -> int:
        """Records committed to the database."""
        return self._written

    @property
    def pending(self) -> int:
        """Records submitted but not yet committed (queued or in a batch being retried)."""
        return self._submitted - self._written - self._duplicates

    @property
    def paused_s(self) -> float:
        """Seconds the writer held back to stay within `max_cpu_share`."""
        return self._paused_s

    @property
    def write_errors(self) -> int:
        """Failed write attempts so far (each retried)."""
        return self._write_errors

    def known_request_ids(self, request_ids: Iterable[str]) -> set[str]:
        """Those of `request_ids` that are in the log or submitted and waiting to be written."""
        request_ids = list(request_ids)
        waiting = {rid for rid in request_ids if rid in self._unwritten}
        return waiting | self._stored_ids(set(request_ids) - waiting)

    def start(self):
        """Start the writer thread; it loads the PII scanner first, when redacting.

        Loading presidio takes seconds; on the writer thread it does not hold up the
        server's start, and records submitted meanwhile simply wait in the queue.
        """
        if self._closed:
            raise RuntimeError(f"{self._name} {self._where} is closed; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=self._name.replace(" ", "-"), daemon=True
            )
            self._thread.start()
        return self

    def submit(self, record) -> None:
        """Queue `record` for writing; returns at once, whatever the database is doing."""
        if self._closed:
            raise RuntimeError(f"{self._name} {self._where} is closed; create a new one")
        with self._count_lock:  # counted first: `pending` never undercounts a queued record
            self._submitted += 1
        self._unwritten.add(record.request_id)
        self._queue.append(record)
        if len(self._queue) >= self.max_batch:
            self._wake.set()

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything submitted so far, then stop the writer thread.

        Records still unwritten after `timeout_s` (database unavailable) are logged as a
        warning; the writer keeps retrying them until the process exits.
        """
        if self._closed:
            return
        self.start()
        self._closed = True
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._logger.warning(
                "%s: %d records not yet written to %s after %.0f s; "
                "they are lost if the process exits now",
                self._name,
                self.pending,
                self._where,
                timeout_s,
            )
        else:
            self._engine.dispose()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self) -> None:
        self._lower_priority()
        if self.redact:
            from attnops.monitors import pii

            pii.build_analyzer()
        while True:
            deadline = time.monotonic() + self.flush_interval_s
            closing = self._closing.is_set()  # read before draining: nothing submitted is missed
            try:
                self._flush()
            except Exception:  # the writer must outlive any one bad batch
                self._write_errors += 1
                self._logger.exception("%s: writing a batch failed; retrying", self._name)
            if closing and self.pending <= 0:
                return
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()

    def _flush(self) -> None:
        self._taken.extend(self._queue.popleft() for _ in range(len(self._queue)))
        self._paced_cpu_s, self._paced_at = time.thread_time(), time.monotonic()
        # Uncapped, all at once (a batch may share work, e.g. the generation log's articles).
        size = len(self._taken) if self.max_cpu_share is None else self._slice
        while self._taken:  # a failing redaction leaves them taken, for the next try
            self._rows.extend(self._to_rows(self._taken[:size]))
            del self._taken[:size]
            if len(self._rows) >= self.max_batch and not self._write():
                return  # the database refuses: retry at the next flush, not at every slice
            self._pace()
        self._write()

    def _pace(self) -> None:
        """Sleep until this thread's CPU time since the last pause is within its share."""
        if self.max_cpu_share is None or self._closing.is_set():
            return
        used_s = time.thread_time() - self._paced_cpu_s
        owed_s = used_s / self.max_cpu_share - (time.monotonic() - self._paced_at)
        if owed_s > 0:
            self._closing.wait(owed_s)  # a close ends the pause: it drains at full speed
            self._paused_s += owed_s
        self._paced_cpu_s, self._paced_at = time.thread_time(), time.monotonic()

    def _lower_priority(self) -> None:
        """Lower this thread's scheduling priority by `nice_increment` (Linux only: there
        `setpriority` on a thread id changes that thread alone)."""
        if self._nice <= 0 or sys.platform != "linux":
            return
        thread_id = threading.get_native_id()
        try:
            nice = os.getpriority(os.PRIO_PROCESS, thread_id) + self._nice
            os.setpriority(os.PRIO_PROCESS, thread_id, min(nice, 19))
        except OSError as exc:  # e.g. a seccomp profile refusing it: the share still holds
            self._logger.warning("%s: cannot lower the writer's priority (%s)", self._name, exc)

    def _write(self) -> bool:
        """Insert the converted rows in one transaction; on failure keep them for a retry.

        Returns:
            False when the write failed.
        """
        if not self._rows:
            return True
        try:
            with self._engine.begin() as conn:
                rows = self._insert(conn, self._rows)
        except SQLAlchemyError as exc:
            self._write_errors += 1
            self._warn_failure(len(self._rows), exc)
            return False
        duplicates = len(self._rows) - len(rows)
        if duplicates:
            self._logger.warning("%s: skipped %d duplicate request ids", self._name, duplicates)
        if self._failing_since is not None:
            self._logger.info("%s: writing to %s again", self._name, self._where)
            self._failing_since = None
        self._written += len(rows)
        self._duplicates += duplicates
        self._unwritten.difference_update(row["request_id"] for row in self._rows)
        self._rows = []
        try:
            self._committed(rows)
        except Exception:  # what follows a write (scoring) must not stop the log
            self._logger.exception("%s: handing on written records failed", self._name)
        return True

    def _report_pii(self, hits: Sequence[Sequence]) -> None:
        """Call `on_pii` per hit; runs once per record (rows stay redacted across retries)."""
        if self._on_pii is None:
            return
        try:
            for hit in (hit for found in hits for hit in found):
                self._on_pii(hit.entity)
        except Exception:  # a broken metric must not stop the log
            self._logger.exception("%s: the on_pii callback failed", self._name)

    def _warn_failure(self, n_rows: int, exc: SQLAlchemyError) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._last_warning < _WARN_EVERY_S:
            return
        self._last_warning = now
        reason = exc.orig if isinstance(exc, DBAPIError) else exc  # no SQL or parameters
        self._logger.warning(
            "%s: cannot write %d records to %s (%s: %s) for %.0f s; "
            "keeping them and retrying every %.2g s",
            self._name,
            n_rows,
            self._where,
            type(reason).__name__,
            reason,
            now - self._failing_since,
            self.flush_interval_s,
        )
