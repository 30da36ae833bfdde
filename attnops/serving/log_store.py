"""The inference log: every answered request, written off the request path, PII redacted.

`submit` only appends to an in-memory queue; a daemon thread wakes every `flush_interval_s`
(sooner when `max_batch` records wait), computes the attention entropy the sampled records
deferred to it, redacts the texts and inserts the batch in one transaction, within a
bounded share of one core (`max_cpu_share`, see `log_writer`). A failed write keeps the
batch and retries, so a locked or unreachable database delays records but never loses them.
Labels (`feedback`) arrive later and are joined by request id when reading, so a label may
arrive before its record is written.

SQLite by default (WAL, so monitors read while the server writes), Postgres by URL: the
schema uses portable types only.

Example:
    >>> with InferenceLog("sqlite:///.attnops/inference.db") as log:
    ...     log.submit(record)
    >>> InferenceLog("sqlite:///.attnops/inference.db").window(version="3", limit=200)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

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
        on_entropy: Called on the writer thread with the version and the (layers, heads)
            attention entropy of each sampled record, once computed.
        max_cpu_share: At most this share of one core for the writer thread while serving
            (None: no bound). The default keeps up with a 2-core server at full load.
        nice_increment: How much lower the writer thread's scheduling priority is (Linux).
    """

    def __init__(
        self,
        url: str,
        *,
        flush_interval_s: float = 0.5,
        max_batch: int = 1000,
        redact: bool = True,
        on_pii: Callable[[str], None] | None = None,
        on_entropy: Callable[[str, np.ndarray], None] | None = None,
        max_cpu_share: float | None = 0.25,
        nice_increment: int = 5,
    ) -> None:
        self._init_writer(
            flush_interval_s=flush_interval_s,
            max_batch=max_batch,
            redact=redact,
            on_pii=on_pii,
            name="inference log",
            max_cpu_share=max_cpu_share,
            nice_increment=nice_increment,
        )
        self._on_entropy = on_entropy
        super().__init__(url)

    def _stored_ids(self, request_ids: Iterable[str]) -> set[str]:
        return set(self.request_versions(request_ids))

    def _insert(self, conn, rows: list[dict]) -> list[dict]:
        rows, _ = new_rows(conn, rows)
        if rows:
            conn.execute(inference_log.insert(), rows)
        return rows

    def _to_rows(self, records: Sequence[LogRecord]) -> list[dict]:
        for record in records:
            if record.attention_entropy_later is not None:
                record.attention_entropy = self._deferred_entropy(record)
                record.attention_entropy_later = None  # a retried batch does not recompute it
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

    def _deferred_entropy(self, record: LogRecord) -> np.ndarray | None:
        """The record's deferred attention entropy; None (stored without it) if it fails."""
        try:
            entropy = record.attention_entropy_later()
        except Exception:  # a record is never held back for an optional score
            self._logger.exception(
                "%s: attention entropy of %s failed", self._name, record.request_id
            )
            return None
        if self._on_entropy is not None:
            try:
                self._on_entropy(record.version, entropy)
            except Exception:  # a broken metric must not stop the log
                self._logger.exception("%s: the on_entropy callback failed", self._name)
        return entropy
