"""The inference service: champion and canary from the MLflow registry behind one API.

Endpoints: `POST /predict` (one text), `POST /predict/batch` (several), `POST /feedback`
(labels that arrive later), `GET /health` (alive), `GET /ready` (a champion is loaded),
`GET /metrics` (Prometheus), `POST /admin/reload` (bearer token: re-read the aliases).

A reload loads the new versions beside the old ones and then swaps them in one step:
requests already queued or running finish on the version they started with, none is
dropped. A version whose tokenizer does not hash to its tag is never served.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from attnops.models.aliases import CANARY, CHAMPION
from attnops.serving.batching import MicroBatcher
from attnops.serving.engine import ServedVersions
from attnops.serving.log_store import InferenceLog
from attnops.serving.metrics import ServingMetrics
from attnops.serving.routing import choose_route
from attnops.serving.validation import (
    ClientError,
    authorize,
    check_feedback,
    check_texts,
    read_body,
)
from attnops.settings import Settings
from attnops.spec import PipelineSpec

logger = logging.getLogger(__name__)


class PredictRequest(BaseModel):
    text: str  # an empty one gets 422 from check_texts, with the same words as in a batch
    key: str | None = None
    """Sticky-routing key (user, session, ticket): the same key always gets the same version."""


class BatchRequest(BaseModel):
    texts: list[str] = Field(min_length=1)
    key: str | None = None


class Feedback(BaseModel):
    labels: dict[str, str] = Field(min_length=1)
    """request_id -> true label."""


def create_app(spec: PipelineSpec, settings: Settings) -> FastAPI:
    """The service for `spec`; models load at start-up (the port opens once they have)."""
    if spec.task == "generation":
        from attnops.serving.generation_app import create_generation_app

        return create_generation_app(spec, settings)
    serving = spec.serving
    metrics = ServingMetrics()
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scratch = None
        try:
            scratch = tempfile.TemporaryDirectory(dir=_prepared(settings), prefix="serving-")
            log = _open_log(settings, serving.log_flush_interval_s, metrics)
            models = ServedVersions(spec, settings, Path(scratch.name))
            served = await asyncio.to_thread(models.load)
        except Exception as exc:
            # Kept for whoever runs the app (the CLI prints it as one line).
            app.state.startup_error = exc
            if scratch is not None:
                scratch.cleanup()
            raise
        with scratch:
            metrics.publish(served)
            log.start()
            batcher = MicroBatcher(
                models.run,
                (CHAMPION, CANARY),
                max_batch_size=serving.max_batch_size,
                max_wait_ms=serving.max_batch_wait_ms,
                workers=models.workers,
                on_batch=lambda route, n: metrics.batch_size.labels(route).observe(n),
            )
            batcher.start()
            lock = asyncio.Lock()
            state.update(models=models, log=log, batcher=batcher, reload=lock)
            refresh = (
                asyncio.create_task(
                    _refresh_aliases(models, lock, metrics, serving.alias_refresh_s)
                )
                if serving.alias_refresh_s > 0
                else None
            )
            print(f"serving {spec.name} {served} on {serving.url}", flush=True)
            try:
                yield
            finally:
                if refresh is not None:
                    refresh.cancel()
                await batcher.stop()  # answers what is queued
                log.close()  # then writes every record
                models.close()

    app = FastAPI(title=f"attnops: {spec.name}", lifespan=lifespan)
    app.state.startup_error = None

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        metrics.errors.labels(str(exc.status), exc.reason, exc.route).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def read(request: Request, model: type[BaseModel]):
        return await read_body(request, model, serving.max_request_bytes)

    async def answer(texts: list[str], key: str | None) -> list[dict]:
        models: ServedVersions = state["models"]
        arrived = time.perf_counter()
        ids = [uuid.uuid4().hex for _ in texts]
        route = choose_route(key or ids[0], serving.canary_share, has_canary=CANARY in models.slots)
        if serving.over_length == "reject":
            slot = models.slots.get(route) or models.slots[CHAMPION]
            for i, n in enumerate(await asyncio.to_thread(slot.token_counts, texts)):
                if n > slot.max_length:
                    raise ClientError(
                        422,
                        "too_long",
                        f"input {i} has {n} tokens; the model takes {slot.max_length} "
                        "(serving.over_length: reject)",
                        route,
                    )
        batcher: MicroBatcher = state["batcher"]
        log: InferenceLog = state["log"]
        try:
            results = await asyncio.gather(*(batcher.submit(route, t) for t in texts))
        except Exception as exc:
            # Failed requests are logged too: the release compares error rates per route.
            slot = models.slots.get(route) or models.slots[CHAMPION]
            for request_id, text in zip(ids, texts, strict=True):
                failed_ms = (time.perf_counter() - arrived) * 1000
                log.submit(slot.log_record(request_id, route, text, failed_ms, None))
            raise ClientError(500, "model_error", f"the model failed: {exc}", route) from exc
        latency_ms = (time.perf_counter() - arrived) * 1000
        out = []
        for request_id, text, (slot, a) in zip(ids, texts, results, strict=True):
            metrics.observe(route, slot.version, a, latency_ms)
            log.submit(slot.log_record(request_id, route, text, latency_ms, a))
            out.append(
                {
                    "request_id": request_id,
                    "label": a.label,
                    "confidence": a.confidence,
                    "version": slot.version,
                    "route": route,
                    "truncated": bool(a.features["truncated"]),
                    "n_tokens": int(a.features["n_tokens"]),
                }
            )
        metrics.log_pending.set(log.pending)
        return out

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        body = await read(request, PredictRequest)
        check_texts([body.text], batch=False)
        return (await answer([body.text], body.key))[0]

    @app.post("/predict/batch")
    async def predict_batch(request: Request) -> dict:
        body = await read(request, BatchRequest)
        if len(body.texts) > serving.max_batch_inputs:
            raise ClientError(
                422,
                "too_many",
                f"{len(body.texts)} texts in one request; the limit is "
                f"{serving.max_batch_inputs} (serving.max_batch_inputs)",
            )
        check_texts(body.texts, batch=True)
        return {"results": await answer(body.texts, body.key)}

    @app.post("/feedback")
    async def feedback(request: Request) -> dict:
        body = await read(request, Feedback)
        log: InferenceLog = state["log"]
        known = await asyncio.to_thread(log.known_request_ids, body.labels)
        classes = {spec.data.out_of_scope_label} - {None}
        for slot in state["models"].slots.values():
            classes |= set(slot.label_names)
        check_feedback(body.labels, known, dict.fromkeys(body.labels, classes))
        return {"recorded": await asyncio.to_thread(log.record_labels, body.labels)}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        models: ServedVersions | None = state.get("models")
        if models is None or CHAMPION not in models.slots:
            return JSONResponse({"ready": False}, status_code=503)
        versions = {route: s.version if s else None for route, s in models.routes().items()}
        log: InferenceLog = state["log"]
        body = {"ready": True, "model": spec.name, **versions, "log_pending": log.pending}
        return JSONResponse(body)

    @app.get("/metrics")
    async def prometheus() -> Response:
        log: InferenceLog | None = state.get("log")
        if log is not None:
            metrics.log_pending.set(log.pending)
            metrics.log_write_errors.set(log.write_errors)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload(request: Request) -> dict:
        authorize(request, serving.admin_token_env)
        models: ServedVersions = state["models"]
        async with state["reload"]:  # one reload at a time
            try:
                served = await asyncio.to_thread(models.load)
            except (LookupError, ValueError) as exc:
                metrics.reloads.labels("refused").inc()
                raise ClientError(409, "reload_refused", str(exc)) from exc
        metrics.reloads.labels("ok").inc()
        metrics.publish(served)
        return served

    return app


def _prepared(settings: Settings) -> Path:
    """ATTNOPS_HOME, created; the server's scratch space lives there."""
    try:
        settings.prepare()
    except OSError as exc:
        raise OSError(
            f"cannot create ATTNOPS_HOME {settings.home} ({exc.strerror}); point ATTNOPS_HOME "
            "at a writable folder"
        ) from exc
    return settings.home


def _open_log(settings: Settings, flush_interval_s: float, metrics: ServingMetrics):
    """The inference log, opened before any model loads: a bad path fails in a second."""
    try:
        return InferenceLog(
            settings.inference_db,
            flush_interval_s=flush_interval_s,
            on_pii=lambda entity: metrics.pii_hits.labels(entity).inc(),
            on_entropy=metrics.observe_entropy,
        )
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise RuntimeError(
            f"cannot open the inference log {settings.inference_db} ({reason}); make its "
            "folder writable or point ATTNOPS_INFERENCE_DB elsewhere"
        ) from exc


async def _refresh_aliases(
    models: ServedVersions, lock: asyncio.Lock, metrics: ServingMetrics, every_s: float
) -> None:
    """Follow alias moves made elsewhere (another replica's reload, a CLI rollback)."""
    while True:
        await asyncio.sleep(every_s)
        async with lock:
            try:
                served = await asyncio.to_thread(models.load)
            except Exception as exc:  # keep serving what is loaded; say why once per try
                metrics.reloads.labels("refused").inc()
                serving = {r: s.version if s else None for r, s in models.routes().items()}
                logger.warning("alias refresh failed, still serving %s: %s", serving, exc)
                continue
        metrics.publish(served)
