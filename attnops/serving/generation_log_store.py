"""The generation log's writer: one row per request, written right after the reply, redacted.

The same buffered writer as the classification log (`log_writer.BufferedLogWriter`): the
request path only queues a `GenerationRecord`; the writer thread redacts the message, the
article and the output, finds the output's PII leaks (entities the output holds that its
own input does not: `gate_generation_operational.pii_leaks`, the gate's definition),
stores each article once in `generation_context` (keyed by the SHA-256 of its stored text)
and inserts the batch in one transaction, retrying until it lands, draining on `close`.
Once rows are committed the raw records go to `on_written` (the hallucination scorer,
which UPDATEs the rows' scores later and needs the unredacted texts and prompt ids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import bindparam, select

from attnops.serving.generation_log_reader import GenerationLogReader
from attnops.serving.generation_log_schema import generation_context, generation_log
from attnops.serving.log_schema import chunks, new_rows
from attnops.serving.log_writer import BufferedLogWriter

_RECORD = "_record"  # row keys starting with "_" travel with a row but are not columns
_CONTEXT = "_context"


@dataclass
class GenerationRecord:
    """One request as the server saw it; texts are raw (the writer redacts them).

    `status` 200 is an answered request; a failed one (503, 504, 500, or 499 for a client
    that left mid-stream) has what was written before it failed, and `ttft_ms` the time the
    client waited without a first token when none came.
    """

    request_id: str
    ts: float
    model_name: str
    version: str
    route: str
    source: str
    context: str
    output: str
    prompt_tokens: int
    output_tokens: int
    ttft_ms: float
    itl_ms: float | None
    latency_ms: float
    status: int = 200
    stopped_at_eos: bool = False
    prefix_hit: bool | None = None
    prompt_ids: Sequence[int] = field(default=(), repr=False)
    """The prompt's token ids, for the detector's teacher-forced pass; never stored."""
    sample_lookback: bool = False
    """Store this output's mean lookback ratio (the sampled share of requests)."""

    def __post_init__(self) -> None:
        # Checked on the caller's side: a record the writer cannot store would stall it.
        if not isinstance(self.request_id, str) or not 0 < len(self.request_id) <= 64:
            raise ValueError(f"request_id must be a 1-64 character str, got {self.request_id!r}")
        for name in ("source", "context", "output"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")


# Columns copied from a record as they are (converted to plain Python types).
_COPIED = [
    c
    for c in generation_log.columns
    if c.name in GenerationRecord.__dataclass_fields__ and c.name not in ("source", "output")
]


def context_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class GenerationLog(BufferedLogWriter, GenerationLogReader):
    """Buffered, redacting writer of the generation log (and, as a reader, its windows).

    Args:
        url: SQLAlchemy URL of the inference log (the classification tables live beside).
        flush_interval_s: How often the writer thread writes what is waiting.
        max_batch: Wake the writer early once this many records wait.
        redact: Redact PII in stored texts. False stores raw texts unscanned (`has_pii`,
            `pii_entities`, `output_pii_leaks` NULL) and never loads presidio.
        on_pii: Called with the entity of every PII hit in a message (a user's input).
        on_leak: Called with (version, entities) for every output that leaks PII.
        on_written: Called with the answered records (status 200) just committed.
        max_cpu_share: At most this share of one core for the writer thread while serving
            (None: no bound), as for the classification log: redaction must not take the
            decode thread's core. It lags under load, never drops.
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
        on_leak: Callable[[str, list[str]], None] | None = None,
        on_written: Callable[[list[GenerationRecord]], None] | None = None,
        max_cpu_share: float | None = 0.25,
        nice_increment: int = 5,
    ) -> None:
        self._init_writer(
            flush_interval_s=flush_interval_s,
            max_batch=max_batch,
            redact=redact,
            on_pii=on_pii,
            name="generation log",
            max_cpu_share=max_cpu_share,
            nice_increment=nice_increment,
        )
        GenerationLogReader.__init__(self, url, redact=redact)
        self._on_leak, self._on_written = on_leak, on_written

    def record_scores(self, updates: list[dict]) -> None:
        """Write the detector's columns of stored rows, all rows in one transaction.

        Args:
            updates: per row `request_id`, `hallucination_score`, `hallucination_flag` and
                `lookback_ratio` (None where not sampled), set together by one UPDATE.
        """
        statement = (
            generation_log.update()
            .where(generation_log.c.request_id == bindparam("rid"))
            .values(
                hallucination_score=bindparam("score"),
                hallucination_flag=bindparam("flag"),
                lookback_ratio=bindparam("lookback"),
            )
        )
        rows = [
            {
                "rid": u["request_id"],
                "score": u["hallucination_score"],
                "flag": u["hallucination_flag"],
                "lookback": u["lookback_ratio"],
            }
            for u in updates
        ]
        with self._engine.begin() as conn:
            conn.execute(statement, rows)

    def _stored_ids(self, request_ids: Iterable[str]) -> set[str]:
        return set(self.request_versions(request_ids))

    def _to_rows(self, records: Sequence[GenerationRecord]) -> list[dict]:
        sources = [r.source for r in records]
        contexts = [r.context for r in records]
        outputs = [r.output for r in records]
        if self.redact:
            from attnops.monitors import pii
            from attnops.monitors.gate_generation_operational import pii_leaks

            source_hits, output_hits = pii.find_pii(sources), pii.find_pii(outputs)
            raw = pd.DataFrame({"source": sources, "context": contexts, "output": outputs})
            leaks = [sorted({h.entity for h in hits}) for hits in pii_leaks(raw, output_hits)]
            sources = pii.redact(sources, source_hits)
            outputs = pii.redact(outputs, output_hits)
            articles = list(dict.fromkeys(contexts))  # a batch shares a few: scan each once
            redacted = dict(zip(articles, pii.redact(articles), strict=True))
            contexts = [redacted[c] for c in contexts]
            # The article is the operator's text, not the user's: its hits are redacted but
            # not reported as PII arriving in inputs.
            self._report_pii(source_hits)
            self._report_leaks(records, leaks)
            entities = [sorted({h.entity for h in hits}) for hits in source_hits]
            scanned = list(zip(entities, leaks, strict=True))
        else:
            scanned = [(None, None)] * len(records)
        rows = []
        for record, source, context, output, (entities, leak) in zip(
            records, sources, contexts, outputs, scanned, strict=True
        ):
            row = {
                c.name: None
                if getattr(record, c.name) is None
                else c.type.python_type(getattr(record, c.name))
                for c in _COPIED
            }
            row.update(
                source=source,
                output=output,
                context_sha256=context_sha256(context),
                has_pii=None if entities is None else bool(entities),
                pii_entities=None if entities is None else ",".join(entities),
                output_pii_leaks=None if leak is None else ",".join(leak),
                hallucination_score=None,
                hallucination_flag=None,
                lookback_ratio=None,
            )
            row[_CONTEXT], row[_RECORD] = context, record
            rows.append(row)
        return rows

    def _insert(self, conn, rows: list[dict]) -> list[dict]:
        rows, _ = new_rows(conn, rows, generation_log)
        if not rows:
            return rows
        contexts = {row["context_sha256"]: row[_CONTEXT] for row in rows}
        stored = set()
        for chunk in chunks(list(contexts)):
            query = select(generation_context.c.sha256).where(
                generation_context.c.sha256.in_(chunk)
            )
            stored.update(conn.execute(query).scalars())
        new = [{"sha256": sha, "text": text} for sha, text in contexts.items() if sha not in stored]
        if new:
            conn.execute(generation_context.insert(), new)
        columns = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        conn.execute(generation_log.insert(), columns)
        return rows

    def _committed(self, rows: list[dict]) -> None:
        if self._on_written is not None:
            answered = [row[_RECORD] for row in rows if row["status"] == 200]
            if answered:
                self._on_written(answered)

    def _report_leaks(self, records: Sequence[GenerationRecord], leaks: list[list[str]]) -> None:
        if self._on_leak is None:
            return
        try:
            for record, entities in zip(records, leaks, strict=True):
                if entities:
                    self._on_leak(record.version, entities)
        except Exception:  # a broken metric must not stop the log
            self._logger.exception("generation log: the on_leak callback failed")
