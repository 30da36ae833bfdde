"""The inference log's tables and records, shared by its writer and its readers.

Portable column types only: the same schema serves SQLite (the embedded default, in WAL
mode so monitors read while the server writes) and Postgres.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    create_engine,
    event,
    make_url,
    select,
)

from attnops.models.attention_columns import entropy_columns
from attnops.settings import service_timeout_s

metadata = MetaData()
inference_log = Table(
    "inference_log",
    metadata,
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
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("label", String(255), nullable=False),
    Column("ts", Float, nullable=False),
)
SCALARS = [c for c in inference_log.columns if not isinstance(c.type, LargeBinary)]
JOINED = inference_log.outerjoin(feedback, inference_log.c.request_id == feedback.c.request_id)
_CHUNK = 500  # ids per IN (...) clause, well under SQLite's bound-parameter limit


@dataclass
class LogRecord:
    """One answered request as the server saw it; `text` is raw (the store redacts it).

    `embedding` is the compact (projected) pooled output, float32, 1-d; `attention_entropy`
    is per-head entropy of shape (layers, heads) for sampled requests, else None. A sampled
    request may instead carry `attention_entropy_later`, which computes it: the store calls
    it on its writer thread, off the request path.
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
    attention_entropy_later: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Checked here, on the caller's side: a record the writer cannot store would stall it.
        if not isinstance(self.request_id, str) or not 0 < len(self.request_id) <= 64:
            raise ValueError(f"request_id must be a 1-64 character str, got {self.request_id!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"text must be a str, got {type(self.text).__name__}")
        for name in ("confidence", "latency_ms"):
            if not math.isfinite(getattr(self, name)):  # stored as NULL: refused, forever
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if np.ndim(self.embedding) != 1:
            raise ValueError(f"embedding must be 1-d, got shape {np.shape(self.embedding)}")
        if self.attention_entropy is not None and np.ndim(self.attention_entropy) != 2:
            shape = np.shape(self.attention_entropy)
            raise ValueError(f"attention_entropy must be (layers, heads), got shape {shape}")


# Columns copied from a record as they are (converted to plain Python types).
COPIED = [c for c in SCALARS if c.name in LogRecord.__dataclass_fields__ and c.name != "text"]


def create_log_engine(url: str):
    """Engine for `url`; SQLite gets its folder created and WAL + synchronous=NORMAL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        # libpq waits for an unreachable host without limit; ATTNOPS_SERVICE_TIMEOUT_S bounds it.
        timeout_s = max(1, math.ceil(service_timeout_s()))
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": timeout_s})
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


def record_row(record: LogRecord, text: str, hits) -> dict:
    """The `inference_log` row of `record`, with `text` already redacted (hits None: not)."""
    row = {c.name: c.type.python_type(getattr(record, c.name)) for c in COPIED}
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


def new_rows(conn, rows: list[dict], table: Table = inference_log) -> tuple[list[dict], int]:
    """`rows` minus request ids already stored in `table` or repeated in the batch, and how
    many those are.

    A batch whose commit succeeded but was reported failed (a dropped connection) is retried;
    without this its primary keys would make every retry fail.
    """
    ids = [row["request_id"] for row in rows]
    stored = set()
    for chunk in chunks(ids):
        query = select(table.c.request_id).where(table.c.request_id.in_(chunk))
        stored.update(conn.execute(query).scalars())
    new = []
    for row in rows:
        if row["request_id"] not in stored:
            stored.add(row["request_id"])
            new.append(row)
    return new, len(rows) - len(new)


def filters(version: str | None, route: str | None, since_ts: float | None) -> list:
    conditions = []
    if version is not None:
        conditions.append(inference_log.c.version == version)
    if route is not None:
        conditions.append(inference_log.c.route == route)
    if since_ts is not None:
        conditions.append(inference_log.c.ts >= since_ts)
    return conditions


def chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    return (items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK))


def records_frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """Window rows (oldest first) as a record frame: decoded embeddings, entropy columns."""
    columns = [c.name for c in SCALARS] + ["label"]
    frame = pd.DataFrame([[row[c] for c in columns] for row in rows], columns=columns)
    embeddings = [np.frombuffer(row["embedding"], dtype=np.float32) for row in rows]
    frame["embedding"] = pd.Series(embeddings, index=frame.index, dtype=object)
    sampled = [i for i, row in enumerate(rows) if row["attention_entropy"] is not None]
    if not sampled:
        return frame

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
