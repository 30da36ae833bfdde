"""Reading the inference log: windows for the monitors and the release, labels joined.

Labels (`feedback`) arrive later than their requests (an endpoint or a file) and are
joined by request id when reading, so a label may arrive before its record is written
(`/feedback` accepts ids still waiting in the writer's queue). A labels file names requests
already answered: its ids must be in the log (see `load_labels_file`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import case, func, select

from attnops.models.text_files import read_utf8
from attnops.serving.log_schema import (
    JOINED,
    SCALARS,
    chunks,
    create_log_engine,
    feedback,
    filters,
    inference_log,
    metadata,
    records_frame,
)
from attnops.serving.validation import feedback_problems


class LogReader:
    """Reads windows and counts from the inference log at `url`, and records labels.

    Args:
        url: SQLAlchemy URL, e.g. `sqlite:///.attnops/inference.db` (parent folder created)
            or `postgresql+psycopg://user@host/db` (driver installed separately).
    """

    def __init__(self, url: str) -> None:
        self._engine = create_log_engine(url)
        self._where = self._engine.url.render_as_string(hide_password=True)
        metadata.create_all(self._engine)

    def record_labels(self, labels: Mapping[str, str]) -> int:
        """Store (or replace) the true label of each request id; returns how many."""
        now = time.time()
        rows = [
            {"request_id": str(rid), "label": str(lab), "ts": now} for rid, lab in labels.items()
        ]
        with self._engine.begin() as conn:
            for chunk in chunks([row["request_id"] for row in rows]):
                conn.execute(feedback.delete().where(feedback.c.request_id.in_(chunk)))
            if rows:
                conn.execute(feedback.insert(), rows)
        return len(rows)

    def request_versions(self, request_ids: Iterable[str]) -> dict[str, str]:
        """The model version that answered each of `request_ids` that is in the log."""
        found: dict[str, str] = {}
        with self._engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(map(str, request_ids)))):
                query = select(inference_log.c.request_id, inference_log.c.version).where(
                    inference_log.c.request_id.in_(chunk)
                )
                found.update((rid, version) for rid, version in conn.execute(query))
        return found

    def load_labels_file(
        self,
        path: str | Path,
        classes_of_version: Callable[[str], Collection[str] | None] = lambda version: None,
    ) -> int:
        """Record labels from a CSV or JSONL file with columns `request_id,label`.

        All or nothing: every request id must be in the log and every label one of the
        classes of the version that answered it (`classes_of_version`; None skips the
        check for that version), or nothing is recorded.

        Raises:
            ValueError: If the file type is not .csv/.jsonl, the file is not UTF-8 text or
                cannot be parsed, a column is missing, a row has an empty request id or
                label, a request id is not in the log or a label is not a class.
        """
        path = Path(path)
        if path.suffix not in (".csv", ".jsonl", ".ndjson"):
            raise ValueError(f"{path}: expected a .csv or .jsonl file of request_id,label")
        text = read_utf8(path)  # names the file and the first bad byte of a binary file
        try:
            if path.suffix == ".csv":
                frame = pd.read_csv(
                    io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""]
                )
            else:
                frame = pd.read_json(io.StringIO(text), lines=True, dtype=False)
        except (ValueError, pd.errors.ParserError) as exc:
            raise ValueError(f"cannot read {path}: {exc}; expected request_id,label") from None
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
        labels = dict(zip(frame["request_id"].astype(str), frame["label"].astype(str), strict=True))
        versions = self.request_versions(labels)
        classes = {version: classes_of_version(version) for version in set(versions.values())}
        problems = feedback_problems(
            labels, versions, {rid: classes[v] for rid, v in versions.items()}
        )
        if problems:
            raise ValueError(f"{path}: " + "; ".join(problems) + "; nothing was recorded")
        return self.record_labels(labels)

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
                *SCALARS,
                feedback.c.label,
                inference_log.c.embedding,
                inference_log.c.attention_entropy,
            )
            .select_from(JOINED)
            .where(*filters(version, route, since_ts))
            .order_by(inference_log.c.ts.desc(), inference_log.c.request_id.desc())
            .limit(limit)
        )
        if labelled_only:
            query = query.where(feedback.c.request_id.is_not(None))
        if answered_only:
            query = query.where(inference_log.c.status == 200)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return records_frame(rows[::-1])

    def counts(
        self, *, version: str | None = None, route: str | None = None, since_ts: float | None = None
    ) -> dict[str, int]:
        """`requests`, `errors` (status other than 200) and `labelled` among matching records."""
        errors = func.sum(case((inference_log.c.status != 200, 1), else_=0))
        query = (
            select(func.count(), func.coalesce(errors, 0), func.count(feedback.c.request_id))
            .select_from(JOINED)
            .where(*filters(version, route, since_ts))
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
