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
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from attnops.models.aliases import CANARY, CHAMPION
from attnops.serving.batching import MicroBatcher
from attnops.serving.engine import ServedVersions
from attnops.serving.log_store import InferenceLog
from attnops.serving.metrics import ServingMetrics
from attnops.serving.routes import (
    Loaded,
    add_admin_routes,
    add_client_error_handler,
    add_feedback_route,
    add_predict_routes,
    add_status_routes,
)
from attnops.settings import Settings
from attnops.spec import PipelineSpec

logger = logging.getLogger(__name__)


def create_app(spec: PipelineSpec, settings: Settings) -> FastAPI:
    """The service for `spec`; models load at start-up (the port opens once they have)."""
    if spec.task == "generation":
        from attnops.serving.generation_app import create_generation_app

        return create_generation_app(spec, settings)
    metrics = ServingMetrics()
    loaded = Loaded()
    app = FastAPI(
        title=f"attnops: {spec.name}", lifespan=_lifespan(spec, settings, metrics, loaded)
    )
    app.state.startup_error = None
    add_client_error_handler(app, metrics)
    add_predict_routes(app, spec.serving, metrics, loaded)
    add_feedback_route(app, spec, loaded)
    add_status_routes(app, spec.name, metrics, loaded)
    add_admin_routes(app, spec.serving, metrics, loaded)
    return app


def _lifespan(
    spec: PipelineSpec, settings: Settings, metrics: ServingMetrics, loaded: Loaded
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up (log, models, micro-batcher, alias refresh) and an orderly shut-down."""
    serving = spec.serving

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
            loaded.models, loaded.log, loaded.batcher, loaded.reload = models, log, batcher, lock
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

    return lifespan


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
