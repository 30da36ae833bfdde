"""The inference service of a `task: generation` spec: champion and canary write replies.

Endpoints: `POST /generate` ({"source", "context"?, "max_new_tokens"?, "key"?} -> the reply
and what it cost), `POST /generate/stream` (the same as server-sent events, one per text
chunk, then a summary), `POST /feedback` ({"request_id", "reference"}: the corrected reply),
`GET /health`, `GET /ready`, `GET /metrics`, `POST /admin/reload` (bearer token: re-read the
aliases). As for classification, a request's `key` (user, session, ticket; its request id
when absent) fixes its route: `serving.canary_share` of the keys go to the canary while one
is served, always the same ones. Each version decodes greedily, up to the `max_new_tokens`
it was registered with, in its own continuous-batching engine (`generation_versions`).

Every request that reached a version is logged right after its reply (`GenerationLog`:
redacted, token counts, latencies, route, status; failures too) and scored later by the
version's hallucination detector (`GenerationScorer`), off the request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from attnops.models.aliases import CANARY, CHAMPION
from attnops.serving.generation_calls import (
    Call,
    GenerateRequest,
    ReferenceFeedback,
    check_reference,
    reply_summary,
)
from attnops.serving.generation_log_store import GenerationLog
from attnops.serving.generation_metrics import GenerationMetrics
from attnops.serving.generation_scheduler import Overloaded
from attnops.serving.generation_scoring import GenerationScorer
from attnops.serving.generation_versions import GenerationVersions, stop_engines
from attnops.serving.routing import bucket, choose_route
from attnops.serving.validation import ClientError, authorize, read_body
from attnops.settings import Settings
from attnops.spec import PipelineSpec

logger = logging.getLogger(__name__)


def create_generation_app(spec: PipelineSpec, settings: Settings) -> FastAPI:
    """The generation service for `spec`; the versions load at start-up."""
    serving, limits = spec.serving, spec.generation.serving
    metrics = GenerationMetrics(spec.generation.cost_per_hour_usd)
    state: dict[str, object] = {}
    stopping: set[asyncio.Task] = set()  # retired engines stopping (kept from the GC)

    async def reload() -> dict[str, str | None]:
        versions: GenerationVersions = state["versions"]
        async with state["reload"]:  # one reload at a time
            idle = versions.swap(await asyncio.to_thread(versions.prepare))
        await stop_engines(idle)
        served = versions.routes()
        metrics.publish(served)
        return served

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scratch = None
        try:
            settings.prepare()
            scratch = tempfile.TemporaryDirectory(dir=settings.home, prefix="serving-")
            # Rows are scored once committed: the log hands them on to the scorer.
            log = _open_log(
                settings, serving.log_flush_interval_s, metrics, lambda rs: scorer.submit(rs)
            )
            scorer = GenerationScorer(log.record_scores, on_scored=metrics.on_scored)
            versions = GenerationVersions(
                spec, settings, Path(scratch.name), on_step=metrics.on_step, scorer=scorer
            )
            versions.swap(await asyncio.to_thread(versions.prepare))
        except Exception as exc:
            app.state.startup_error = exc  # the CLI prints it as one line
            if scratch is not None:
                scratch.cleanup()
            raise
        with scratch:
            log.start()
            scorer.start()
            state.update(versions=versions, log=log, scorer=scorer, reload=asyncio.Lock())
            served = versions.routes()
            metrics.publish(served)
            follow = (
                asyncio.create_task(_follow_aliases(reload, metrics, serving.alias_refresh_s))
                if serving.alias_refresh_s > 0
                else None
            )
            print(f"serving {spec.name} {served} (generation) on {serving.url}", flush=True)
            try:
                yield
            finally:
                if follow is not None:
                    follow.cancel()
                await asyncio.to_thread(versions.stop_all)
                await asyncio.to_thread(log.close)  # every record, then their scoring jobs
                await asyncio.to_thread(scorer.close)

    app = FastAPI(title=f"attnops: {spec.name}", lifespan=lifespan)
    app.state.startup_error = None

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        metrics.errors.labels(str(exc.status), exc.reason, exc.route).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def read(request: Request, model: type[BaseModel]):
        return await read_body(request, model, serving.max_request_bytes)

    async def begin(request: Request) -> Call:
        """Route, prepare and queue a request; the caller must `finish` it."""
        arrived = time.perf_counter()
        asked = await read(request, GenerateRequest)
        versions: GenerationVersions = state["versions"]
        request_id = uuid.uuid4().hex
        has_canary = CANARY in versions.slots
        route = choose_route(asked.key or request_id, serving.canary_share, has_canary=has_canary)
        slot = versions.acquire(route)
        try:
            pending = slot.reply.pending(
                asked.source,
                asked.context,
                asked.max_new_tokens,
                timeout_s=limits.request_timeout_s,
                route=route,
            )
        except ClientError:  # refused before reaching the model: not logged, as for /predict
            settle(versions.release(slot))
            raise
        sampled = bucket(f"{request_id}/lookback") < serving.attention_sample_share
        call = Call(request_id, route, slot, asked.source, asked.context, pending, arrived, sampled)
        try:
            slot.engine.submit(pending)
        except Overloaded as exc:
            finish(call, 503)
            raise ClientError(503, "overloaded", str(exc), route) from None
        return call

    def finish(call: Call, status: int) -> None:
        """Log the request (once), count it, give its version back."""
        if call.finished:
            return
        call.finished = True
        record = call.record(spec.name, status)
        state["log"].submit(record)
        if status == 200:
            metrics.finished(
                call.route,
                record.version,
                record.prompt_tokens,
                record.output_tokens,
                record.ttft_ms / 1000,
                record.prefix_hit,
            )
        settle(state["versions"].release(call.slot))

    def settle(idle) -> None:
        if idle:
            task = asyncio.create_task(stop_engines(idle))
            stopping.add(task)
            task.add_done_callback(stopping.discard)

    @app.post("/generate")
    async def generate(request: Request) -> dict:
        call = await begin(request)
        status = 499  # unless set below: the client left before the reply
        try:
            async for _ in call.stream.chunks():
                pass
            call.stream.raise_failure()
            status = 200
            return reply_summary(call)
        except ClientError as exc:
            status = exc.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            if status == 499:  # cancelled: nobody reads the rest, free the batch row
                call.stream.closed = True
            finish(call, status)

    @app.post("/generate/stream")
    async def generate_stream(request: Request) -> StreamingResponse:
        call = await begin(request)

        async def events():
            status = 499  # unless set below: the client left mid-stream
            try:
                async for chunk in call.stream.chunks():
                    yield f"data: {json.dumps({'token': chunk})}\n\n"
                call.stream.raise_failure()
                status = 200
                yield f"event: done\ndata: {json.dumps(reply_summary(call))}\n\n"
            except ClientError as exc:  # the status line is sent: say it in the stream
                status = exc.status
                metrics.errors.labels(str(exc.status), exc.reason, exc.route).inc()
                yield f"event: error\ndata: {json.dumps({'detail': exc.detail})}\n\n"
            finally:
                call.stream.closed = True  # a client that left frees its batch row
                finish(call, status)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/feedback")
    async def feedback(request: Request) -> dict:
        body = await read(request, ReferenceFeedback)
        log: GenerationLog = state["log"]
        check_reference(body, await asyncio.to_thread(log.known_request_ids, [body.request_id]))
        recorded = await asyncio.to_thread(log.record_references, {body.request_id: body.reference})
        return {"recorded": recorded}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        versions: GenerationVersions | None = state.get("versions")
        if versions is None or CHAMPION not in versions.slots:
            return JSONResponse({"ready": False}, status_code=503)
        scorer: GenerationScorer = state["scorer"]
        served = versions.routes()
        return JSONResponse(
            {
                "ready": True,
                "model": spec.name,
                **served,
                "log_pending": state["log"].pending,
                "scoring_backlog": scorer.backlog,
                # False: the version has no detector, its outputs stay unscored
                "detector": {v: scorer.has_detector(v) for v in served.values() if v},
            }
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        versions: GenerationVersions | None = state.get("versions")
        if versions is not None:
            metrics.refresh(**versions.load_now(), scoring_backlog=state["scorer"].backlog)
            log: GenerationLog = state["log"]
            metrics.log_pending.set(log.pending)
            metrics.log_write_errors.set(log.write_errors)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> dict:
        authorize(request, serving.admin_token_env)
        try:
            served = await reload()
        except (LookupError, ValueError) as exc:
            metrics.reloads.labels("refused").inc()
            raise ClientError(409, "reload_refused", str(exc)) from exc
        metrics.reloads.labels("ok").inc()
        return served

    return app


def _open_log(
    settings: Settings, flush_interval_s: float, metrics: GenerationMetrics, on_written
) -> GenerationLog:
    """The generation log, opened before any model loads: a bad path fails in a second."""
    try:
        return GenerationLog(
            settings.inference_db,
            flush_interval_s=flush_interval_s,
            on_pii=lambda entity: metrics.pii_hits.labels(entity).inc(),
            on_leak=metrics.on_leak,
            on_written=on_written,
        )
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise RuntimeError(
            f"cannot open the inference log {settings.inference_db} ({reason}); make its "
            "folder writable or point ATTNOPS_INFERENCE_DB elsewhere"
        ) from exc


async def _follow_aliases(reload, metrics: GenerationMetrics, every_s: float) -> None:
    """Follow alias moves made elsewhere (another replica's reload, a CLI rollback)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await reload()
        except Exception as exc:  # keep serving what is loaded; say why once per try
            metrics.reloads.labels("refused").inc()
            logger.warning("alias refresh failed, still serving what was loaded: %s", exc)
