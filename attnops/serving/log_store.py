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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    event,
    func,
    make_url,
    select,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

logger = logging.getLogger(__name__)

_metadata = MetaData()
inference_log = Table(
    "inference_log",
    _metadata,
    Column("request_id", String(64), primary_key=True),
    Column("ts", Float, nullable=False, index=True),
    Column("model_name", String(255), nullable=False),
    Column("version", String(64), nullable=False, index=True),
    Column("route", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("has_pii", Boolean),  # NULL when the store does not redact (not scanned)
    Column("pii_entities", String(255)),
    Column("prediction", String(255), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("status", Integer, nullable=False),
    Column("text_chars", Integer, nullable=False),
    Column("n_tokens", Integer, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("unk_rate", Float, nullable=False),
    Column("tokens_per_word", Float, nullable=False),
    Column("non_letter_share", Float, nullable=False),
    Column("unsupported", Boolean, nullable=False),
    Column("embedding", LargeBinary, nullable=False),
    Column("attention_entropy", LargeBinary),
    Column("attention_shape", String(32)),
)
feedback = Table(
    "feedback",
    _metadata,
    Column("request_id", String(64), primary_key=True),
    Column("label", String(255), nullable=False),
    Column("ts", Float, nullable=False),
)
_SCALARS = [c for c in inference_log.columns if not isinstance(c.type, LargeBinary)]
_JOINED = inference_log.outerjoin(feedback, inference_log.c.request_id == feedback.c.request_id)
_CHUNK = 500  # ids per IN (...) clause, well under SQLite's bound-parameter limit
_WARN_EVERY_S = 60.0


@dataclass
class LogRecord:
    """One answered request as the server saw it; `text` is raw (the store redacts it).

    `embedding` is the compact (projected) pooled output, float32, 1-d; `attention_entropy`
    is per-head entropy of shape (layers, heads) for sampled requests, else None.
    """

    request_id: str
    ts: float
    model_name: str
    version: str
    route: str
    text: str
    prediction: str
    confidence: float
    latency_ms: float
    n_tokens: int
    truncated: bool
    text_chars: int
    unk_rate: float
    tokens_per_word: float
    non_letter_share: float
    unsupported: bool
    embedding: np.ndarray
    attention_entropy: np.ndarray | None = None
    status: int = 200

    def __post_init__(self) -> None:
        # Checked here, on the caller's side: a record the writer cannot store would stall it.
        if not isinstance(self.request_id, str) or not 0 < len(self.request_id) <= 64:
            raise ValueError(f"request_id must be a 1-64 character str, got {self.request_id!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"text must be a str, got {type(self.text).__name__}")
        if np.ndim(self.embedding) != 1:
            raise ValueError(f"embedding must be 1-d, got shape {np.shape(self.embedding)}")
        if self.attention_entropy is not None and np.ndim(self.attention_entropy) != 2:
            shape = np.shape(self.attention_entropy)
            raise ValueError(f"attention_entropy must be (layers, heads), got shape {shape}")


# Columns copied from a record as they are (converted to plain Python types).
_COPIED = [c for c in _SCALARS if c.name in LogRecord.__dataclass_fields__ and c.name != "text"]


class InferenceLog:
    """Buffered, redacting writer and reader of the inference log.

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
        self._on_pii = on_pii
        self._engine = _create_engine(url)
        self._where = self._engine.url.render_as_string(hide_password=True)
        _metadata.create_all(self._engine)
        self._queue: deque[LogRecord] = deque()
        self._taken: list[LogRecord] = []  # taken from the queue, not yet redacted
        self._rows: list[dict] = []  # redacted, not yet committed (kept across failed writes)
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

    def start(self) -> InferenceLog:
        """Start the writer thread (loading the PII scanner first, when redacting)."""
        if self._closed:
            raise RuntimeError(f"inference log {self._where} is closed; create a new one")
        if self._thread is None:
            if self.redact:  # presidio takes seconds to load: pay it here, not in a flush
                from attnops.monitors import pii

                pii.build_analyzer()
            self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
            self._thread.start()
        return self

    def submit(self, record: LogRecord) -> None:
        """Queue `record` for writing; returns at once, whatever the database is doing."""
        if self._closed:
            raise RuntimeError(f"inference log {self._where} is closed; create a new one")
        with self._count_lock:  # counted first: `pending` never undercounts a queued record
            self._submitted += 1
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
                rows, duplicates = _new_rows(conn, self._rows)
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
        return [_row(r, text, found) for r, text, found in zip(records, texts, hits, strict=True)]

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

    def record_labels(self, labels: Mapping[str, str]) -> int:
        """Store (or replace) the true label of each request id; returns how many."""
        now = time.time()
        rows = [
            {"request_id": str(rid), "label": str(lab), "ts": now} for rid, lab in labels.items()
        ]
        with self._engine.begin() as conn:
            for chunk in _chunks([row["request_id"] for row in rows]):
                conn.execute(feedback.delete().where(feedback.c.request_id.in_(chunk)))
            if rows:
                conn.execute(feedback.insert(), rows)
        return len(rows)

    def load_labels_file(self, path: str | Path) -> int:
        """Record labels from a CSV or JSONL file with columns `request_id,label`.

        Raises:
            ValueError: If the file type is not .csv/.jsonl, a column is missing or a row
                has an empty request id or label.
        """
        path = Path(path)
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        elif path.suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            raise ValueError(f"{path}: expected a .csv or .jsonl file of request_id,label")
        missing = [c for c in ("request_id", "label") if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{path} has no column {', '.join(map(repr, missing))} "
                f"(columns: {', '.join(map(str, frame.columns)) or 'none'}); "
                "expected request_id,label"
            )
        empty = frame[["request_id", "label"]].isna().any(axis=1).to_numpy()
        if empty.any():
            raise ValueError(
                f"{path}: {empty.sum()} rows have an empty request_id or label "
                f"(first: data row {np.flatnonzero(empty)[0] + 1})"
            )
        return self.record_labels(dict(zip(frame["request_id"], frame["label"], strict=True)))

    def window(
        self,
        *,
        version: str | None = None,
        route: str | None = None,
        limit: int = 500,
        since_ts: float | None = None,
        labelled_only: bool = False,
        answered_only: bool = False,
    ) -> pd.DataFrame:
        """The newest `limit` matching records, oldest first, with their labels.

        `answered_only` leaves out failed requests (status other than 200), which carry no
        prediction or embedding: what the drift monitors need.

        Returns:
            One row per record: every non-binary column of the log, `label` (None when no
            feedback), `embedding` (float32 arrays) and, when any row was sampled for
            attention, `l{layer}h{head}` entropy columns (NaN for rows not sampled).
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        query = (
            select(
                *_SCALARS,
                feedback.c.label,
                inference_log.c.embedding,
                inference_log.c.attention_entropy,
            )
            .select_from(_JOINED)
            .where(*_filters(version, route, since_ts))
            .order_by(inference_log.c.ts.desc(), inference_log.c.request_id.desc())
            .limit(limit)
        )
        if labelled_only:
            query = query.where(feedback.c.request_id.is_not(None))
        if answered_only:
            query = query.where(inference_log.c.status == 200)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return _frame(rows[::-1])

    def counts(
        self, *, version: str | None = None, route: str | None = None, since_ts: float | None = None
    ) -> dict[str, int]:
        """`requests`, `errors` (status other than 200) and `labelled` among matching records."""
        errors = func.sum(case((inference_log.c.status != 200, 1), else_=0))
        query = (
            select(func.count(), func.coalesce(errors, 0), func.count(feedback.c.request_id))
            .select_from(_JOINED)
            .where(*_filters(version, route, since_ts))
        )
        with self._engine.connect() as conn:
            requests, n_errors, labelled = conn.execute(query).one()
        return {"requests": int(requests), "errors": int(n_errors), "labelled": int(labelled)}

    def labelled_since(self, since_ts: float) -> pd.DataFrame:
        """Records whose label arrived at or after `since_ts`, for retraining.

        Returns:
            Columns `request_id`, `text` (redacted), `label`, `ts` (the request's time) and
            `label_ts` (the label's), oldest request first.
        """
        query = (
            select(
                inference_log.c.request_id,
                inference_log.c.text,
                feedback.c.label,
                inference_log.c.ts,
                feedback.c.ts.label("label_ts"),
            )
            .join_from(inference_log, feedback, inference_log.c.request_id == feedback.c.request_id)
            .where(feedback.c.ts >= since_ts)
            .order_by(inference_log.c.ts, inference_log.c.request_id)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return pd.DataFrame(rows, columns=["request_id", "text", "label", "ts", "label_ts"])


def _create_engine(url: str):
    """Engine for `url`; SQLite gets its folder created and WAL + synchronous=NORMAL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        raise ValueError(
            f"{url!r} is an in-memory SQLite database, which each thread sees empty; "
            "use a file, e.g. sqlite:///.attnops/inference.db"
        )
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # commits survive a process crash
        cursor.close()

    return engine


def _row(record: LogRecord, text: str, hits) -> dict:
    """The `inference_log` row of `record`, with `text` already redacted (hits None: not)."""
    row = {c.name: c.type.python_type(getattr(record, c.name)) for c in _COPIED}
    entropy = record.attention_entropy
    row.update(
        text=text,
        has_pii=None if hits is None else bool(hits),
        pii_entities=None if hits is None else ",".join(sorted({h.entity for h in hits})),
        embedding=np.ascontiguousarray(record.embedding, dtype=np.float32).tobytes(),
        attention_entropy=None
        if entropy is None
        else np.ascontiguousarray(entropy, dtype=np.float32).tobytes(),
        attention_shape=None if entropy is None else "{}x{}".format(*np.shape(entropy)),
    )
    return row


def _new_rows(conn, rows: list[dict]) -> tuple[list[dict], int]:
    """`rows` minus request ids already stored or repeated in the batch, and how many those are.

    A batch whose commit succeeded but was reported failed (a dropped connection) is retried;
    without this its primary keys would make every retry fail.
    """
    ids = [row["request_id"] for row in rows]
    stored = set()
    for chunk in _chunks(ids):
        query = select(inference_log.c.request_id).where(inference_log.c.request_id.in_(chunk))
        stored.update(conn.execute(query).scalars())
    new = []
    for row in rows:
        if row["request_id"] not in stored:
            stored.add(row["request_id"])
            new.append(row)
    return new, len(rows) - len(new)


def _filters(version: str | None, route: str | None, since_ts: float | None) -> list:
    conditions = []
    if version is not None:
        conditions.append(inference_log.c.version == version)
    if route is not None:
        conditions.append(inference_log.c.route == route)
    if since_ts is not None:
        conditions.append(inference_log.c.ts >= since_ts)
    return conditions


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    return (items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK))


def _frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """Window rows (oldest first) as a record frame: decoded embeddings, entropy columns."""
    columns = [c.name for c in _SCALARS] + ["label"]
    frame = pd.DataFrame([[row[c] for c in columns] for row in rows], columns=columns)
    embeddings = [np.frombuffer(row["embedding"], dtype=np.float32) for row in rows]
    frame["embedding"] = pd.Series(embeddings, index=frame.index, dtype=object)
    sampled = [i for i, row in enumerate(rows) if row["attention_entropy"] is not None]
    if not sampled:
        return frame
    # records imports torch: only readers that meet attention samples pay for it
    from attnops.models.records import entropy_columns

    def names_of(shape: str) -> list[str]:
        return entropy_columns(*_dims(shape))

    shapes = sorted({rows[i]["attention_shape"] for i in sampled}, key=_dims)
    names = list(dict.fromkeys(name for shape in shapes for name in names_of(shape)))
    position = {name: j for j, name in enumerate(names)}
    values = np.full((len(rows), len(names)), np.nan)
    for i in sampled:
        targets = [position[name] for name in names_of(rows[i]["attention_shape"])]
        values[i, targets] = np.frombuffer(rows[i]["attention_entropy"], dtype=np.float32)
    return pd.concat([frame, pd.DataFrame(values, columns=names, index=frame.index)], axis=1)


def _dims(shape: str) -> tuple[int, int]:
    """(layers, heads) from a stored `attention_shape` such as "6x12"."""
    layers, heads = shape.split("x")
    return int(layers), int(heads)
