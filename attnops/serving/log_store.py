"""The inference log: every answered request, written off the request path, PII redacted.

`submit` only appends to an in-memory queue; a daemon thread wakes every `flush_interval_s`
(sooner when `max_batch` records wait), redacts the texts and inserts the batch in one
transaction. A failed write keeps the batch and retries, so a locked or unreachable database
delays records but never loses them. Labels (`feedback`) arrive later and are joined by
request id when reading, so a label may arrive before its record is written.

SQLite by default (WAL, so monitors read while the server writes), Postgres by URL: the
schema uses portable types only.

Example:
    >>> with InferenceLog("sqlite:///.attnops/inference.db") as log:
    ...     log.submit(record)
    >>> InferenceLog("sqlite:///.attnops/inference.db").window(version="3", limit=200)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from attnops.serving.log_reader import LogReader
from attnops.serving.log_schema import LogRecord, inference_log, new_rows, record_row

__all__ = ["InferenceLog", "LogRecord"]
logger = logging.getLogger(__name__)
_WARN_EVERY_S = 60.0


class InferenceLog(LogReader):
    """Buffered, redacting writer of the inference log (and, as a `LogReader`, its reader).

    Args:
        url: SQLAlchemy URL, e.g. `sqlite:///.attnops/inference.db` (parent folder created)
            or `postgresql+psycopg://user@host/db` (driver installed separately).
        flush_interval_s: How often the writer thread writes what is waiting.
        max_batch: Wake the writer early once this many records wait.
        redact: Replace PII in texts by placeholders before storing. False stores raw texts
            unscanned (`has_pii`, `pii_entities` NULL) and never loads presidio.
        on_pii: Called on the writer thread with the entity name of every PII hit found
            (e.g. to count hits in a metric).
    """

    def __init__(
        self,
        url: str,
        *,
        flush_interval_s: float = 0.5,
        max_batch: int = 1000,
        redact: bool = True,
        on_pii: Callable[[str], None] | None = None,
    ) -> None:
        if flush_interval_s <= 0 or max_batch < 1:
            raise ValueError(
                f"need flush_interval_s > 0 and max_batch >= 1, got {flush_interval_s}, {max_batch}"
            )
        self.flush_interval_s, self.max_batch, self.redact = flush_interval_s, max_batch, redact
        super().__init__(url)
        self._on_pii = on_pii
        self._queue: deque[LogRecord] = deque()
        self._taken: list[LogRecord] = []  # taken from the queue, not yet redacted
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
    def write_errors(self) -> int:
        """Failed write attempts so far (each retried)."""
        return self._write_errors

    def known_request_ids(self, request_ids: Iterable[str]) -> set[str]:
        """Those of `request_ids` that are in the log or submitted and waiting to be written."""
        request_ids = list(request_ids)
        waiting = {rid for rid in request_ids if rid in self._unwritten}
        return waiting | set(self.request_versions(set(request_ids) - waiting))

    def start(self) -> InferenceLog:
        """Start the writer thread; it loads the PII scanner first, when redacting.

        Loading presidio takes seconds; on the writer thread it does not hold up the
        server's start, and records submitted meanwhile simply wait in the queue.
        """
        if self._closed:
            raise RuntimeError(f"inference log {self._where} is closed; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
            self._thread.start()
        return self

    def submit(self, record: LogRecord) -> None:
        """Queue `record` for writing; returns at once, whatever the database is doing."""
        if self._closed:
            raise RuntimeError(f"inference log {self._where} is closed; create a new one")
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
            logger.warning(
                "inference log: %d records not yet written to %s after %.0f s; "
                "they are lost if the process exits now",
                self.pending,
                self._where,
                timeout_s,
            )
        else:
            self._engine.dispose()

    def __enter__(self) -> InferenceLog:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self) -> None:
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
                logger.exception("inference log: writing a batch failed; retrying")
            if closing and self.pending <= 0:
                return
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()

    def _flush(self) -> None:
        self._taken.extend(self._queue.popleft() for _ in range(len(self._queue)))
        if self._taken:  # a failing redaction leaves them taken, for the next try
            self._rows.extend(self._to_rows(self._taken))
            self._taken = []
        if not self._rows:
            return
        try:
            with self._engine.begin() as conn:
                rows, duplicates = new_rows(conn, self._rows)
                if rows:
                    conn.execute(inference_log.insert(), rows)
        except SQLAlchemyError as exc:
            self._write_errors += 1
            self._warn_failure(len(self._rows), exc)
            return
        if duplicates:
            logger.warning("inference log: skipped %d duplicate request ids", duplicates)
        if self._failing_since is not None:
            logger.info("inference log: writing to %s again", self._where)
            self._failing_since = None
        self._written += len(rows)
        self._duplicates += duplicates
        self._unwritten.difference_update(row["request_id"] for row in self._rows)
        self._rows = []

    def _to_rows(self, records: Sequence[LogRecord]) -> list[dict]:
        texts = [r.text for r in records]
        if self.redact:
            from attnops.monitors import pii

            hits = pii.find_pii(texts)
            texts = pii.redact(texts, hits)
            self._report_pii(hits)
        else:
            hits = [None] * len(records)
        return [
            record_row(r, text, found) for r, text, found in zip(records, texts, hits, strict=True)
        ]

    def _report_pii(self, hits: Sequence[Sequence]) -> None:
        """Call `on_pii` per hit; runs once per record (rows stay redacted across retries)."""
        if self._on_pii is None:
            return
        try:
            for hit in (hit for found in hits for hit in found):
                self._on_pii(hit.entity)
        except Exception:  # a broken metric must not stop the log
            logger.exception("inference log: the on_pii callback failed")

    def _warn_failure(self, n_rows: int, exc: SQLAlchemyError) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._last_warning < _WARN_EVERY_S:
            return
        self._last_warning = now
        reason = exc.orig if isinstance(exc, DBAPIError) else exc  # no SQL or parameters
        logger.warning(
            "inference log: cannot write %d records to %s (%s: %s) for %.0f s; "
            "keeping them and retrying every %.2g s",
            n_rows,
            self._where,
            type(reason).__name__,
            reason,
            now - self._failing_since,
            self.flush_interval_s,
        )
