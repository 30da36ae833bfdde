"""The generation inference log's tables, beside the classification ones in the same database.

A `task: generation` server writes one `generation_log` row per answered request as soon as
the reply is sent (prompt and output PII-redacted, token counts, latencies). The
hallucination detector scores the output later, off the request path, and fills
`hallucination_score`, `hallucination_flag` and (for sampled requests) `lookback_ratio`:
until then they are NULL, so a reader tells "not scored yet" from "scored". Knowledge-base
articles repeat across requests: each is stored once in `generation_context`, keyed by its
SHA-256. Reference outputs (corrections) arrive later in `generation_feedback`, joined by
request id, and are what `retrain` fine-tunes on.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, Text

from attnops.serving.log_schema import metadata

generation_log = Table(
    "generation_log",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("ts", Float, nullable=False, index=True),
    Column("model_name", String(255), nullable=False),
    Column("version", String(64), nullable=False, index=True),
    Column("route", String(16), nullable=False),
    Column("source", Text, nullable=False),  # redacted
    Column("context_sha256", String(64), nullable=False),  # "" hash when there is none
    Column("output", Text, nullable=False),  # redacted
    Column("has_pii", Boolean),  # PII in the source; NULL when the store does not redact
    Column("pii_entities", String(255)),
    Column("output_pii_leaks", String(255)),  # entities in the output not in its input
    Column("prompt_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("ttft_ms", Float, nullable=False),
    Column("itl_ms", Float),  # mean inter-token latency; NULL below 2 output tokens
    Column("latency_ms", Float, nullable=False),
    Column("status", Integer, nullable=False),
    Column("stopped_at_eos", Boolean, nullable=False),
    Column("prefix_hit", Boolean),  # NULL when the prompt had no shared prefix
    Column("hallucination_score", Float),  # NULL until the detector scored it
    Column("hallucination_flag", Boolean),
    Column("lookback_ratio", Float),  # mean lookback ratio; only for sampled requests
)
generation_context = Table(
    "generation_context",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("text", Text, nullable=False),
)
generation_feedback = Table(
    "generation_feedback",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("reference", Text, nullable=False),  # the corrected reply, redacted
    Column("ts", Float, nullable=False),
)
