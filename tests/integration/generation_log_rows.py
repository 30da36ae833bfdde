"""Generation-log rows written straight into the schema's tables, as a generation server and
its detector would, and a server that answers a release's reload as a generation server does,
for tests of what reads the log (release, retrain)."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn
import yaml
from fastapi import FastAPI
from sqlalchemy import select

from attnops.models import aliases, registry
from attnops.serving.generation_log_schema import (
    generation_context,
    generation_feedback,
    generation_log,
)
from attnops.serving.log_schema import create_log_engine, metadata
from attnops.settings import Settings


def reply_row(**values) -> dict:
    """One answered request with plausible figures; `values` override any column, and a
    `context` value is stored in `generation_context` by `insert_replies`."""
    row = {
        "request_id": uuid.uuid4().hex,
        "ts": time.time(),
        "model_name": "tiny-replies",
        "version": "1",
        "route": "champion",
        "source": "Where is my refund?",
        "context": "",
        "output": "Refunds arrive within 5 business days.",
        "has_pii": False,
        "pii_entities": "",
        "output_pii_leaks": "",
        "prompt_tokens": 120,
        "output_tokens": 12,
        "ttft_ms": 80.0,
        "itl_ms": 20.0,
        "latency_ms": 300.0,
        "status": 200,
        "stopped_at_eos": True,
        "prefix_hit": None,
        "hallucination_score": 0.1,
        "hallucination_flag": False,
        "lookback_ratio": None,
    }
    return row | values


def insert_replies(url: str, rows: list[dict], references: dict[str, str] | None = None) -> None:
    """Write `rows` (from `reply_row`) and reference outputs (request id -> reply)."""
    engine = create_log_engine(url)
    metadata.create_all(engine)
    contexts = {}
    logged = []
    for row in rows:
        text = row["context"]
        sha = hashlib.sha256(text.encode()).hexdigest()
        contexts[sha] = text
        logged.append({k: v for k, v in row.items() if k != "context"} | {"context_sha256": sha})
    with engine.begin() as conn:
        known = set(conn.execute(select(generation_context.c.sha256)).scalars())
        new = [{"sha256": s, "text": t} for s, t in contexts.items() if s not in known]
        if new:
            conn.execute(generation_context.insert(), new)
        if logged:
            conn.execute(generation_log.insert(), logged)
        if references:
            conn.execute(
                generation_feedback.insert(),
                [
                    {"request_id": r, "reference": t, "ts": time.time()}
                    for r, t in references.items()
                ],
            )
    engine.dispose()


def score_replies(url: str, flags: dict[str, bool]) -> None:
    """What the detector does off the request path: fill the flag (and score) of each id."""
    engine = create_log_engine(url)
    with engine.begin() as conn:
        for request_id, flag in flags.items():
            conn.execute(
                generation_log.update()
                .where(generation_log.c.request_id == request_id)
                .values(hallucination_flag=flag, hallucination_score=0.9 if flag else 0.1)
            )
    engine.dispose()


def registry_client():
    settings = Settings.from_env()
    settings.prepare()
    return registry.client_for(settings)


@contextmanager
def generation_server(spec_path: str, *, canary_hallucinated: float, canary_replies: int):
    """A server on the spec's port whose reload reports the aliases and, once a canary is
    set, logs 3x `canary_replies` champion replies and the canary's, unscored; the canary's
    are scored 3 s later (`canary_hallucinated` of them flagged)."""
    spec = yaml.safe_load(Path(spec_path).read_text())
    url = Settings.from_env().inference_db
    insert_replies(url, [])  # the tables, before two threads would race to create them
    app = FastAPI()

    def traffic(canary: str) -> None:
        rng = np.random.default_rng(0)
        champion_rows = [
            reply_row(hallucination_flag=bool(f)) for f in rng.random(3 * canary_replies) < 0.05
        ]
        canary_rows = [
            reply_row(
                version=canary, route="canary", hallucination_flag=None, hallucination_score=None
            )
            for _ in range(canary_replies)
        ]
        insert_replies(url, champion_rows + canary_rows)
        time.sleep(3)
        flags = rng.random(canary_replies) < canary_hallucinated
        score_replies(
            url, {r["request_id"]: bool(f) for r, f in zip(canary_rows, flags, strict=True)}
        )

    @app.post("/admin/reload")
    def reload() -> dict:
        client = registry_client()
        served = {
            route: aliases.version_of(client, spec["name"], route)
            for route in (aliases.CHAMPION, aliases.CANARY)
        }
        if served[aliases.CANARY]:
            threading.Thread(target=traffic, args=(served[aliases.CANARY],), daemon=True).start()
        return served

    port = spec["serving"]["port"]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)
