"""The classification service's routes, registered in groups by `app.create_app`: predict,
feedback, status (health, readiness, Prometheus metrics) and admin (reload)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, field_validator

from attnops.models.aliases import CANARY, CHAMPION
from attnops.models.text_checks import label_name
from attnops.serving.batching import MicroBatcher
from attnops.serving.engine import ServedVersions
from attnops.serving.log_store import InferenceLog
from attnops.serving.metrics import ServingMetrics
from attnops.serving.routing import choose_route
from attnops.serving.validation import (
    ClientError,
    authorize,
    check_feedback,
    check_model,
    check_texts,
    read_body,
)
from attnops.spec import PipelineSpec, ServingSpec


class PredictRequest(BaseModel):
    text: str  # an empty one gets 422 from check_texts, with the same words as in a batch
    key: str | None = None
    """Sticky-routing key (user, session, ticket): the same key always gets the same version."""


class BatchRequest(BaseModel):
    texts: list[str] = Field(min_length=1)
    key: str | None = None


class Feedback(BaseModel):
    labels: dict[str, str | int | bool] = Field(min_length=1)
    """request_id -> true label: a class name, or the number or boolean the data wrote it as
    (1 and true name the classes "1" and "True", as the data step reads them)."""

    @field_validator("labels")
    @classmethod
    def _as_class_names(cls, labels: dict[str, str | int | bool]) -> dict[str, str]:
        return {request_id: label_name(label) for request_id, label in labels.items()}


@dataclass
class Loaded:
    """What start-up loads for the routes (None until it has)."""

    models: ServedVersions | None = None
    log: InferenceLog | None = None
    batcher: MicroBatcher | None = None
    reload: asyncio.Lock | None = None
    """One reload at a time: the admin route's and the alias refresh's."""


def add_client_error_handler(app: FastAPI, metrics: ServingMetrics) -> None:
    """A refused request: counted by status, reason and route, answered with its detail."""

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        metrics.errors.labels(str(exc.status), exc.reason, exc.route).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)


def add_predict_routes(
    app: FastAPI, serving: ServingSpec, metrics: ServingMetrics, loaded: Loaded
) -> None:
    """`POST /predict` (one text) and `POST /predict/batch` (several)."""

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        body = await read_body(request, PredictRequest, serving.max_request_bytes)
        check_texts([body.text], batch=False)
        return (await answer([body.text], body.key, serving, metrics, loaded))[0]

    @app.post("/predict/batch")
    async def predict_batch(request: Request) -> dict:
        body = await read_body(request, BatchRequest, serving.max_request_bytes)
        if len(body.texts) > serving.max_batch_inputs:
            raise ClientError(
                422,
                "too_many",
                f"{len(body.texts)} texts in one request; the limit is "
                f"{serving.max_batch_inputs} (serving.max_batch_inputs)",
            )
        check_texts(body.texts, batch=True)
        return {"results": await answer(body.texts, body.key, serving, metrics, loaded)}


async def answer(
    texts: list[str],
    key: str | None,
    serving: ServingSpec,
    metrics: ServingMetrics,
    loaded: Loaded,
) -> list[dict]:
    """Route the texts (by `key`), run them through the micro-batcher, log and count them."""
    models = loaded.models
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
    log = loaded.log
    try:
        results = await asyncio.gather(*(loaded.batcher.submit(route, t) for t in texts))
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


def add_feedback_route(app: FastAPI, spec: PipelineSpec, loaded: Loaded) -> None:
    """`POST /feedback`: true labels that arrive later, for logged requests."""

    @app.post("/feedback")
    async def feedback(request: Request) -> dict:
        body = await read_body(request, Feedback, spec.serving.max_request_bytes)
        log = loaded.log
        known = await asyncio.to_thread(log.known_request_ids, body.labels)
        classes = {spec.data.out_of_scope_label} - {None}
        for slot in loaded.models.slots.values():
            classes |= set(slot.label_names)
        check_feedback(body.labels, known, dict.fromkeys(body.labels, classes))
        return {"recorded": await asyncio.to_thread(log.record_labels, body.labels)}


def add_status_routes(app: FastAPI, name: str, metrics: ServingMetrics, loaded: Loaded) -> None:
    """`GET /health` (alive), `GET /ready` (a champion is loaded), `GET /metrics`."""

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        models = loaded.models
        if models is None or CHAMPION not in models.slots:
            return JSONResponse({"ready": False}, status_code=503)
        versions = {route: s.version if s else None for route, s in models.routes().items()}
        body = {"ready": True, "model": name, **versions, "log_pending": loaded.log.pending}
        return JSONResponse(body)

    @app.get("/metrics")
    async def prometheus() -> Response:
        log = loaded.log
        if log is not None:
            metrics.log_pending.set(log.pending)
            metrics.log_write_errors.set(log.write_errors)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def add_admin_routes(
    app: FastAPI, serving: ServingSpec, metrics: ServingMetrics, loaded: Loaded
) -> None:
    """`POST /admin/reload` (bearer token): re-read the aliases, swap the versions in."""

    @app.post("/admin/reload")
    async def reload(request: Request) -> dict:
        authorize(request, serving.admin_token_env)
        models = loaded.models
        check_model(request, models.spec.name)
        async with loaded.reload:  # one reload at a time
            try:
                served = await asyncio.to_thread(models.load)
            except (LookupError, ValueError) as exc:
                metrics.reloads.labels("refused").inc()
                raise ClientError(409, "reload_refused", str(exc)) from exc
        metrics.reloads.labels("ok").inc()
        metrics.publish(served)
        return served
