"""The inference service of a `task: generation` spec: the champion writes replies.

Endpoints: `POST /generate` ({"source", "context"?, "max_new_tokens"?} -> the reply and what
it cost), `POST /generate/stream` (the same as server-sent events, one per text chunk, then
a summary), `GET /health`, `GET /ready`, `GET /metrics`. The champion is loaded through
`load_version` (weights and tokenizer checked against their hashes) and decodes greedily, up
to the `max_new_tokens` it was registered with, in the continuous-batching engine.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError

from attnops.serving.generation_engine import GenerationEngine
from attnops.serving.generation_metrics import GenerationMetrics
from attnops.serving.generation_scheduler import Overloaded
from attnops.serving.generation_stream import Reply, ReplyStream, load_champion
from attnops.serving.validation import ClientError
from attnops.settings import Settings
from attnops.spec import PipelineSpec


class GenerateRequest(BaseModel):
    source: str
    """The customer's message (what the reply answers)."""
    context: str = ""
    """Grounding text placed before it (the knowledge-base article); shared contexts are cached."""
    max_new_tokens: int | None = Field(None, ge=1)
    """At most the version's own max_new_tokens (its generation config); default: that."""


def create_generation_app(spec: PipelineSpec, settings: Settings) -> FastAPI:
    """The generation service for `spec`; the champion loads at start-up."""
    serving, limits = spec.serving, spec.generation.serving
    metrics = GenerationMetrics(spec.generation.cost_per_hour_usd)
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            settings.prepare()
            scratch = tempfile.TemporaryDirectory(dir=settings.home, prefix="serving-")
            champion = await asyncio.to_thread(load_champion, spec, settings, Path(scratch.name))
        except Exception as exc:
            app.state.startup_error = exc  # the CLI prints it as one line
            raise
        with scratch:
            engine = GenerationEngine(
                champion.model,
                champion.tokenizer,
                limits,
                device=champion.device,
                threads=champion.threads,
                on_step=metrics.on_step,
            )
            engine.start()
            state.update(champion=champion, engine=engine)
            metrics.publish({"champion": champion.version, "canary": None})
            print(
                f"serving {spec.name} v{champion.version} (generation) on {serving.url}", flush=True
            )
            try:
                yield
            finally:
                await asyncio.to_thread(engine.stop)

    app = FastAPI(title=f"attnops: {spec.name}", lifespan=lifespan)
    app.state.startup_error = None

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        metrics.errors.labels(str(exc.status), exc.reason, exc.route).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def start(request: Request) -> ReplyStream:
        body = await request.body()
        if len(body) > serving.max_request_bytes:
            raise ClientError(
                413,
                "too_large",
                f"request body is {len(body)} bytes; the limit "
                f"is {serving.max_request_bytes} (serving.max_request_bytes)",
            )
        try:
            asked = GenerateRequest.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ClientError(422, "invalid", f"{where}: {first['msg']}") from None
        champion: Reply = state["champion"]
        pending = champion.pending(
            asked.source, asked.context, asked.max_new_tokens, timeout_s=limits.request_timeout_s
        )
        try:
            state["engine"].submit(pending)
        except Overloaded as exc:
            raise ClientError(503, "overloaded", str(exc), "champion") from None
        return pending.sink

    def summary(stream: ReplyStream, request_id: str) -> dict:
        champion: Reply = state["champion"]
        done = stream.result
        metrics.finished(
            champion.version,
            done.prompt_tokens,
            len(done.token_ids),
            done.ttft_s,
            done.prefix_hit if stream.prefix_len else None,
        )
        return {
            "output": stream.text,
            "version": champion.version,
            "request_id": request_id,
            "prompt_tokens": done.prompt_tokens,
            "output_tokens": len(done.token_ids),
            "ttft_ms": done.ttft_s * 1000,
            "stopped_at_eos": done.stopped_at_eos,
        }

    @app.post("/generate")
    async def generate(request: Request) -> dict:
        stream = await start(request)
        async for _ in stream.chunks():
            pass
        stream.raise_failure()
        return summary(stream, uuid.uuid4().hex)

    @app.post("/generate/stream")
    async def generate_stream(request: Request) -> StreamingResponse:
        stream = await start(request)
        request_id = uuid.uuid4().hex

        async def events():
            try:
                async for chunk in stream.chunks():
                    yield f"data: {json.dumps({'token': chunk})}\n\n"
                stream.raise_failure()
                yield f"event: done\ndata: {json.dumps(summary(stream, request_id))}\n\n"
            except ClientError as exc:  # the status line is sent: say it in the stream
                metrics.errors.labels(str(exc.status), exc.reason, exc.route).inc()
                yield f"event: error\ndata: {json.dumps({'detail': exc.detail})}\n\n"
            finally:
                stream.closed = True  # a client that left frees its batch row

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        champion = state.get("champion")
        if champion is None:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse(
            {"ready": True, "model": spec.name, "champion": champion.version, "canary": None}
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        engine: GenerationEngine | None = state.get("engine")
        if engine is not None:
            metrics.refresh(
                queue=len(engine.scheduler),
                rows=engine.running,
                max_rows=engine.max_rows,
                kv_bytes=engine.kv_bytes_in_use,
                hit_rate=engine.prefix_cache.hit_rate,
            )
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
