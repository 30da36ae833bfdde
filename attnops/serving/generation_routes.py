"""The generation service's routes, registered in groups by `generation_app`: generate (whole
reply or streamed), feedback, status (health, readiness, Prometheus metrics) and admin
(reload); and a request's way through them (`begin` -> reply -> `finish`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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
from attnops.serving.validation import ClientError, authorize, check_model, read_body
from attnops.spec import PipelineSpec


@dataclass
class GenerationService:
    """The service's spec and metrics, and what start-up loads (None until it has)."""

    spec: PipelineSpec
    metrics: GenerationMetrics
    versions: GenerationVersions | None = None
    log: GenerationLog | None = None
    scorer: GenerationScorer | None = None
    reload_lock: asyncio.Lock | None = None
    """One reload at a time: the admin route's and the alias follower's."""
    stopping: set[asyncio.Task] = field(default_factory=set)
    """Retired engines stopping (kept from the GC)."""


async def reload(service: GenerationService) -> dict[str, str | None]:
    """Re-read the aliases and swap the new versions in; stop the engines left idle."""
    versions = service.versions
    async with service.reload_lock:  # one reload at a time
        idle = versions.swap(await asyncio.to_thread(versions.prepare))
    await stop_engines(idle)
    served = versions.routes()
    service.metrics.publish(served)
    return served


async def begin(request: Request, service: GenerationService) -> Call:
    """Route, prepare and queue a request; the caller must `finish` it."""
    serving = service.spec.serving
    arrived = time.perf_counter()
    asked = await read_body(request, GenerateRequest, serving.max_request_bytes)
    versions = service.versions
    request_id = uuid.uuid4().hex
    has_canary = CANARY in versions.slots
    route = choose_route(asked.key or request_id, serving.canary_share, has_canary=has_canary)
    slot = versions.acquire(route)
    try:
        pending = slot.reply.pending(
            asked.source,
            asked.context,
            asked.max_new_tokens,
            timeout_s=service.spec.generation.serving.request_timeout_s,
            route=route,
        )
    except ClientError:  # refused before reaching the model: not logged, as for /predict
        settle(service, versions.release(slot))
        raise
    sampled = bucket(f"{request_id}/lookback") < serving.attention_sample_share
    call = Call(request_id, route, slot, asked.source, asked.context, pending, arrived, sampled)
    try:
        slot.engine.submit(pending)
    except Overloaded as exc:
        finish(service, call, 503)
        raise ClientError(503, "overloaded", str(exc), route) from None
    return call


def finish(service: GenerationService, call: Call, status: int) -> None:
    """Log the request (once), count it, give its version back."""
    if call.finished:
        return
    call.finished = True
    record = call.record(service.spec.name, status)
    service.log.submit(record)
    if status == 200:
        service.metrics.finished(
            call.route,
            record.version,
            record.prompt_tokens,
            record.output_tokens,
            record.ttft_ms / 1000,
            record.prefix_hit,
        )
    settle(service, service.versions.release(call.slot))


def settle(service: GenerationService, idle) -> None:
    """Stop the engines a release or a reload left idle, in the background."""
    if idle:
        task = asyncio.create_task(stop_engines(idle))
        service.stopping.add(task)
        task.add_done_callback(service.stopping.discard)


def add_generate_routes(app: FastAPI, service: GenerationService) -> None:
    """`POST /generate` (the whole reply) and `POST /generate/stream` (server-sent events)."""

    @app.post("/generate")
    async def generate(request: Request) -> dict:
        call = await begin(request, service)
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
            finish(service, call, status)

    @app.post("/generate/stream")
    async def generate_stream(request: Request) -> StreamingResponse:
        call = await begin(request, service)

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
                service.metrics.errors.labels(str(exc.status), exc.reason, exc.route).inc()
                yield f"event: error\ndata: {json.dumps({'detail': exc.detail})}\n\n"
            finally:
                call.stream.closed = True  # a client that left frees its batch row
                finish(service, call, status)

        return StreamingResponse(events(), media_type="text/event-stream")


def add_feedback_route(app: FastAPI, service: GenerationService) -> None:
    """`POST /feedback`: the corrected reply of a logged request."""

    @app.post("/feedback")
    async def feedback(request: Request) -> dict:
        body = await read_body(request, ReferenceFeedback, service.spec.serving.max_request_bytes)
        log = service.log
        check_reference(body, await asyncio.to_thread(log.known_request_ids, [body.request_id]))
        recorded = await asyncio.to_thread(log.record_references, {body.request_id: body.reference})
        return {"recorded": recorded}


def add_status_routes(app: FastAPI, service: GenerationService) -> None:
    """`GET /health` (alive), `GET /ready` (a champion is served), `GET /metrics`."""

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        versions = service.versions
        if versions is None or CHAMPION not in versions.slots:
            return JSONResponse({"ready": False}, status_code=503)
        scorer = service.scorer
        served = versions.routes()
        return JSONResponse(
            {
                "ready": True,
                "model": service.spec.name,
                **served,
                "log_pending": service.log.pending,
                "scoring_backlog": scorer.backlog,
                # False: the version has no detector, its outputs stay unscored
                "detector": {v: scorer.has_detector(v) for v in served.values() if v},
            }
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics, versions = service.metrics, service.versions
        if versions is not None:
            metrics.refresh(**versions.load_now(), scoring_backlog=service.scorer.backlog)
            log = service.log
            metrics.log_pending.set(log.pending)
            metrics.log_write_errors.set(log.write_errors)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def add_admin_routes(app: FastAPI, service: GenerationService) -> None:
    """`POST /admin/reload` (bearer token): re-read the aliases, swap the versions in."""

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> dict:
        authorize(request, service.spec.serving.admin_token_env)
        check_model(request, service.spec.name)
        try:
            served = await reload(service)
        except (LookupError, ValueError) as exc:
            service.metrics.reloads.labels("refused").inc()
            raise ClientError(409, "reload_refused", str(exc)) from exc
        service.metrics.reloads.labels("ok").inc()
        return served
