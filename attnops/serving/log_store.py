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

from collections.abc import Callable, Iterable, Sequence

from attnops.serving.log_reader import LogReader
from attnops.serving.log_schema import LogRecord, inference_log, new_rows, record_row
from attnops.serving.log_writer import BufferedLogWriter

__all__ = ["InferenceLog", "LogRecord"]


class InferenceLog(BufferedLogWriter, LogReader):
    """Buffered, redacting writer of the inference log (and, as a `LogReader`, its reader).

    Queueing, the writer thread, retries and `close` are `BufferedLogWriter`'s; this class
    says how a `LogRecord` becomes an `inference_log` row.

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
        self._init_writer(
            flush_interval_s=flush_interval_s,
            max_batch=max_batch,
            redact=redact,
            on_pii=on_pii,
            name="inference log",
        )
        super().__init__(url)

    def _stored_ids(self, request_ids: Iterable[str]) -> set[str]:
        return set(self.request_versions(request_ids))

    def _insert(self, conn, rows: list[dict]) -> list[dict]:
        rows, _ = new_rows(conn, rows)
        if rows:
            conn.execute(inference_log.insert(), rows)
        return rows

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
