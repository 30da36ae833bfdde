"""Reading the generation log: windows for the monitors and the release, references joined.

A window is one row per logged request, oldest first, with every `generation_log` column,
the request's `context` (the article, stored once in `generation_context`) and its
`reference` (the corrected reply, from `generation_feedback`, None until one arrives).
References arrive later than their requests (`/feedback` or `attnops labels`); a references
file names requests already answered, so its ids must be in the log and it is recorded all
or nothing, with each problem named by file, line and field.

Example:
    >>> log = GenerationLogReader("sqlite:///.attnops/inference.db")
    >>> log.window(version="3", since_ts=time.time() - 3600)
    >>> log.load_references_file("corrections.csv")
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select

from attnops.models.text_files import read_utf8
from attnops.serving.generation_log_schema import (
    generation_context,
    generation_feedback,
    generation_log,
)
from attnops.serving.log_schema import chunks, create_log_engine, metadata

COLUMNS = [c.name for c in generation_log.columns] + ["context", "reference"]
_FIELDS = ("request_id", "reference")
_LISTED = 5


class GenerationLogReader:
    """Reads windows of the generation log at `url` and records reference replies.

    Args:
        url: SQLAlchemy URL, e.g. `sqlite:///.attnops/inference.db` (parent folder created)
            or `postgresql+psycopg://user@host/db` (driver installed separately).
        redact: Replace PII in references by placeholders before storing them, as the log
            does for prompts and outputs.
    """

    def __init__(self, url: str, *, redact: bool = True) -> None:
        self._engine = create_log_engine(url)
        self._where = self._engine.url.render_as_string(hide_password=True)
        self.redact = redact
        metadata.create_all(self._engine)

    def window(
        self,
        *,
        version: str | None = None,
        route: str | None = None,
        since_ts: float | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """The newest `limit` matching records (all when None), oldest first.

        Returns:
            Every `generation_log` column, `context` ("" when the request had none) and
            `reference` (None until a corrected reply arrives). Scores are None until the
            detector has scored the output (see `generation_scoring`).
        """
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        conditions = []
        if version is not None:
            conditions.append(generation_log.c.version == version)
        if route is not None:
            conditions.append(generation_log.c.route == route)
        if since_ts is not None:
            conditions.append(generation_log.c.ts >= since_ts)
        joined = generation_log.outerjoin(
            generation_context, generation_log.c.context_sha256 == generation_context.c.sha256
        ).outerjoin(
            generation_feedback, generation_log.c.request_id == generation_feedback.c.request_id
        )
        query = (
            select(
                *generation_log.columns,
                func.coalesce(generation_context.c.text, "").label("context"),
                generation_feedback.c.reference,
            )
            .select_from(joined)
            .where(*conditions)
            .order_by(generation_log.c.ts.desc(), generation_log.c.request_id.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return pd.DataFrame([dict(row) for row in rows[::-1]], columns=COLUMNS)

    def request_versions(self, request_ids: Iterable[str]) -> dict[str, str]:
        """The version that answered each of `request_ids` that is in the log."""
        found: dict[str, str] = {}
        with self._engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(map(str, request_ids)))):
                query = select(generation_log.c.request_id, generation_log.c.version).where(
                    generation_log.c.request_id.in_(chunk)
                )
                found.update((rid, version) for rid, version in conn.execute(query))
        return found

    def record_references(self, references: Mapping[str, str]) -> int:
        """Store (or replace) the corrected reply of each request id, redacted; how many.

        The ids are not checked here: `/feedback` and `load_references_file` check them.
        """
        ids = [str(rid) for rid in references]
        texts = [str(text) for text in references.values()]
        if self.redact:
            from attnops.monitors import pii

            texts = pii.redact(texts)
        now = time.time()
        rows = [
            {"request_id": rid, "reference": text, "ts": now}
            for rid, text in zip(ids, texts, strict=True)
        ]
        with self._engine.begin() as conn:
            for chunk in chunks(ids):
                conn.execute(
                    generation_feedback.delete().where(generation_feedback.c.request_id.in_(chunk))
                )
            if rows:
                conn.execute(generation_feedback.insert(), rows)
        return len(rows)

    def load_references_file(self, path: str | Path) -> int:
        """Record corrected replies from a CSV or JSONL file of `request_id,reference`.

        All or nothing: every row must name a request id in the log, once, with a non-empty
        reference, or nothing is recorded.

        Raises:
            ValueError: one sentence naming the file, the first bad line and field, how many
                problems there are, and that nothing was recorded.
        """
        path = Path(path)
        if path.suffix not in (".csv", ".jsonl", ".ndjson"):
            raise ValueError(f"{path}: expected a .csv or .jsonl file of request_id,reference")
        text = read_utf8(path)  # names the file and the first bad byte of a binary file
        rows = _csv_rows(path, text) if path.suffix == ".csv" else _jsonl_rows(path, text)
        problems: list[str] = []
        first_line: dict[str, int] = {}
        references: dict[str, str] = {}
        for line, fields in rows:
            rid, reference = fields.get("request_id"), fields.get("reference")
            for name, value in (("request_id", rid), ("reference", reference)):
                if value is None:
                    problems.append(f"line {line}: {name} is missing")
                elif not isinstance(value, str):
                    kind = type(value).__name__
                    problems.append(f"line {line}: {name} is a {kind}; write it as text")
                elif not value.strip():
                    problems.append(f"line {line}: {name} is empty")
            if not isinstance(rid, str) or not rid.strip() or not isinstance(reference, str):
                continue
            if rid in first_line:
                problems.append(
                    f"line {line}: request_id {rid} is already given on line {first_line[rid]}"
                )
                continue
            first_line[rid] = line
            references[rid] = reference
        if not rows:
            problems.append("no rows")
        known = self.request_versions(references)
        unknown = [rid for rid in references if rid not in known]
        if unknown:
            problems.append(
                f"line {first_line[unknown[0]]}: request_id {unknown[0]} is not in the "
                f"generation log ({len(unknown)} unknown id(s): {_listed(unknown)}; use the "
                "request_id of a /generate answer)"
            )
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise ValueError(f"{path}, {problems[0]}{more}; nothing was recorded")
        return self.record_references(references)


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line where the row starts, its fields) per data row; checks the header."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [name for name in _FIELDS if name not in header]
    if missing:
        raise ValueError(
            f"{path} has no column {', '.join(map(repr, missing))} (columns: "
            f"{', '.join(header) or 'none'}); expected a header line request_id,reference"
        )
    rows, line = [], reader.line_num + 1
    try:
        for fields in reader:
            rows.append((line, fields))
            line = reader.line_num + 1  # a quoted reply may span several lines
    except csv.Error as exc:
        raise ValueError(
            f"{path}, line {line}: not valid CSV ({exc}); nothing was recorded"
        ) from None
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line, object) per non-blank line; each must be a JSON object."""
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ValueError(
                f"{path}, line {line}: not valid JSON ({exc.args[0]}); expected one object "
                'per line like {"request_id": "...", "reference": "..."}; nothing was recorded'
            ) from None
        if not isinstance(value, dict):
            raise ValueError(
                f"{path}, line {line}: expected an object with request_id and reference, got "
                f"a {type(value).__name__}; nothing was recorded"
            )
        rows.append((line, value))
    return rows


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f", ... ({len(items) - _LISTED} more)" if len(items) > _LISTED else "")
