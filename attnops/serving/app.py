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
import hmac
import logging
import os
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError

from attnops.models import registry
from attnops.models.modeling import pick_device
from attnops.models.versions import load_version, resolve
from attnops.serving.batching import MicroBatcher
from attnops.serving.engine import Answer, ModelSlot
from attnops.serving.log_store import InferenceLog, LogRecord
from attnops.serving.metrics import ServingMetrics
from attnops.serving.routing import CANARY, CHAMPION, choose_route
from attnops.settings import Settings
from attnops.spec import PipelineSpec

logger = logging.getLogger(__name__)


class PredictRequest(BaseModel):
    text: str = Field(min_length=1)
    key: str | None = None
    """Sticky-routing key (user, session, ticket): the same key always gets the same version."""


class BatchRequest(BaseModel):
    texts: list[str] = Field(min_length=1)
    key: str | None = None


class Feedback(BaseModel):
    labels: dict[str, str] = Field(min_length=1)
    """request_id -> true label."""


class ClientError(Exception):
    """A request the server will not answer: HTTP status and a sentence saying why."""

    def __init__(self, status: int, reason: str, detail: str, route: str = "none") -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.route = status, reason, detail, route


class Models:
    """The slots being served, swapped whole on reload."""

    def __init__(self, spec: PipelineSpec, settings: Settings, scratch: Path) -> None:
        self.spec, self.settings, self.scratch = spec, settings, scratch
        self.slots: dict[str, ModelSlot] = {}
        self.device = pick_device(spec.training.device)

    def load(self) -> dict[str, str | None]:
        """Read the `champion` and `canary` aliases and load what changed (blocking).

        Raises:
            LookupError: there is no champion to serve.
            ValueError: a version's tokenizer does not match its tag (nothing is swapped).
        """
        client = registry.client_for(self.settings)
        name = self.spec.name
        fresh: dict[str, ModelSlot] = {}
        for route in (CHAMPION, CANARY):
            mv = resolve(client, name, route)
            if mv is None:
                if route == CHAMPION:
                    raise LookupError(
                        f"model '{name}' has no champion; promote a version first "
                        "(attnops release, or the demo)"
                    )
                continue
            current = self.slots.get(route)
            if current is not None and current.version == str(mv.version):
                fresh[route] = current
                continue
            same = next((s for s in self.slots.values() if s.version == str(mv.version)), None)
            fresh[route] = same or self._load_slot(client, str(mv.version))
        self.slots = fresh  # one assignment: a request sees the old set or the new one
        return {route: (s.version if s else None) for route, s in self.routes().items()}

    def routes(self) -> dict[str, ModelSlot | None]:
        return {CHAMPION: self.slots.get(CHAMPION), CANARY: self.slots.get(CANARY)}

    def run(self, route: str, texts: list[str]) -> list[tuple[ModelSlot, Answer]]:
        """On the model thread: the route's slot (the champion if the canary just left)."""
        slots = self.slots
        slot = slots.get(route) or slots[CHAMPION]
        return [(slot, answer) for answer in slot.answer(texts)]

    def _load_slot(self, client, version: str) -> ModelSlot:
        loaded = load_version(client, self.spec.name, version, self.scratch)
        return ModelSlot(
            loaded,
            device=self.device,
            attention_share=self.spec.serving.attention_sample_share,
            unsupported_distance_quantile=self.spec.monitoring.unsupported_distance_quantile,
            forward_batch_size=self.spec.serving.forward_batch_size,
        )


def create_app(spec: PipelineSpec, settings: Settings) -> FastAPI:
    """The service for `spec`; models load at start-up (the port opens once they have)."""
    serving = spec.serving
    metrics = ServingMetrics()
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.prepare()
        with tempfile.TemporaryDirectory(dir=settings.home, prefix="serving-") as scratch:
            models = Models(spec, settings, Path(scratch))
            served = await asyncio.to_thread(models.load)
            _publish(metrics, served)
            log = InferenceLog(
                settings.inference_db,
                flush_interval_s=serving.log_flush_interval_s,
                on_pii=lambda entity: metrics.pii_hits.labels(entity).inc(),
            )
            log.start()
            batcher = MicroBatcher(
                models.run,
                (CHAMPION, CANARY),
                max_batch_size=serving.max_batch_size,
                max_wait_ms=serving.max_batch_wait_ms,
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

    app = FastAPI(title=f"attnops: {spec.name}", lifespan=lifespan)

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        metrics.errors.labels(str(exc.status), exc.reason, exc.route).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def read(request: Request, model: type[BaseModel]):
        body = await request.body()
        if len(body) > serving.max_request_bytes:
            raise ClientError(
                413,
                "too_large",
                f"request body is {len(body)} bytes; the limit is {serving.max_request_bytes} "
                "(serving.max_request_bytes)",
            )
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ClientError(422, "invalid", f"{where}: {first['msg']}") from None

    async def answer(texts: list[str], key: str | None) -> list[dict]:
        models: Models = state["models"]
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
                log.submit(
                    _record(
                        request_id, slot, route, text, (time.perf_counter() - arrived) * 1000, None
                    )
                )
            raise ClientError(500, "model_error", f"the model failed: {exc}", route) from exc
        latency_ms = (time.perf_counter() - arrived) * 1000
        out = []
        for request_id, text, (slot, a) in zip(ids, texts, results, strict=True):
            _observe(metrics, route, slot.version, a, latency_ms)
            log.submit(_record(request_id, slot, route, text, latency_ms, a))
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
        empty = [i for i, t in enumerate(body.texts) if not t]
        if empty:
            raise ClientError(422, "invalid", f"texts.{empty[0]}: empty text")
        return {"results": await answer(body.texts, body.key)}

    @app.post("/feedback")
    async def feedback(request: Request) -> dict:
        body = await read(request, Feedback)
        log: InferenceLog = state["log"]
        return {"recorded": await asyncio.to_thread(log.record_labels, body.labels)}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        models: Models | None = state.get("models")
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
        _authorize(request, serving.admin_token_env)
        models: Models = state["models"]
        async with state["reload"]:  # one reload at a time
            try:
                served = await asyncio.to_thread(models.load)
            except (LookupError, ValueError) as exc:
                metrics.reloads.labels("refused").inc()
                raise ClientError(409, "reload_refused", str(exc)) from exc
        metrics.reloads.labels("ok").inc()
        _publish(metrics, served)
        return served

    return app


async def _refresh_aliases(
    models: Models, lock: asyncio.Lock, metrics: ServingMetrics, every_s: float
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
        _publish(metrics, served)


def _authorize(request: Request, token_env: str) -> None:
    expected = os.environ.get(token_env)
    if not expected:
        raise ClientError(403, "admin_disabled", f"admin endpoints are off: set {token_env}")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ClientError(401, "unauthorized", f"send 'Authorization: Bearer ${token_env}'")


def _publish(metrics: ServingMetrics, served: dict[str, str | None]) -> None:
    metrics.served.clear()
    for route, version in served.items():
        if version is not None:
            metrics.served.labels(route, version).set(1)


def _observe(metrics: ServingMetrics, route: str, version: str, a: Answer, ms: float) -> None:
    metrics.requests.labels(route, version).inc()
    metrics.latency.labels(route, version).observe(ms / 1000)
    metrics.tokens.labels(version).observe(a.features["n_tokens"])
    metrics.confidence.labels(version).observe(a.confidence)
    if a.features["truncated"]:
        metrics.truncated.labels(version).inc()
    if a.unsupported:
        metrics.unsupported.labels(version).inc()
    if a.attention_entropy is not None:
        for (layer, head), value in np.ndenumerate(a.attention_entropy):
            metrics.attention_entropy.labels(version, str(layer), str(head)).observe(value)


def _record(
    request_id: str,
    slot: ModelSlot,
    route: str,
    text: str,
    latency_ms: float,
    a: Answer | None,
) -> LogRecord:
    """The log record of one request; `a` None for a request the model failed (status 500)."""
    if a is None:
        answered = {
            "prediction": "",
            "confidence": float("nan"),
            "n_tokens": 0,
            "truncated": False,
            "text_chars": len(text),
            "unk_rate": 0.0,
            "tokens_per_word": 0.0,
            "non_letter_share": 0.0,
            "unsupported": False,
            "embedding": np.zeros(0, dtype=np.float32),
            "status": 500,
        }
    else:
        f = a.features
        answered = {
            "prediction": a.label,
            "confidence": a.confidence,
            "n_tokens": int(f["n_tokens"]),
            "truncated": bool(f["truncated"]),
            "text_chars": int(f["text_chars"]),
            "unk_rate": float(f["unk_rate"]),
            "tokens_per_word": float(f["tokens_per_word"]),
            "non_letter_share": float(f["non_letter_share"]),
            "unsupported": a.unsupported,
            "embedding": a.embedding,
            "attention_entropy": a.attention_entropy,
        }
    return LogRecord(
        request_id=request_id,
        ts=time.time(),
        model_name=slot.name,
        version=slot.version,
        route=route,
        text=text,
        latency_ms=latency_ms,
        **answered,
    )
