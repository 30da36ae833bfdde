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
import logging
import tempfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from attnops.serving.generation_log_store import GenerationLog
from attnops.serving.generation_metrics import GenerationMetrics
from attnops.serving.generation_routes import (
    GenerationService,
    add_admin_routes,
    add_feedback_route,
    add_generate_routes,
    add_status_routes,
    reload,
)
from attnops.serving.generation_scoring import GenerationScorer
from attnops.serving.generation_versions import GenerationVersions
from attnops.serving.routes import add_client_error_handler
from attnops.settings import Settings
from attnops.spec import PipelineSpec

logger = logging.getLogger(__name__)


def create_generation_app(spec: PipelineSpec, settings: Settings) -> FastAPI:
    """The generation service for `spec`; the versions load at start-up."""
    service = GenerationService(spec, GenerationMetrics(spec.generation.cost_per_hour_usd))
    app = FastAPI(title=f"attnops: {spec.name}", lifespan=_lifespan(settings, service))
    app.state.startup_error = None
    add_client_error_handler(app, service.metrics)
    add_generate_routes(app, service)
    add_feedback_route(app, service)
    add_status_routes(app, service)
    add_admin_routes(app, service)
    return app


def _lifespan(
    settings: Settings, service: GenerationService
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up (log, scorer, versions, alias follower) and an orderly shut-down."""
    spec, metrics = service.spec, service.metrics
    serving = spec.serving

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
            service.versions, service.log, service.scorer = versions, log, scorer
            service.reload_lock = asyncio.Lock()
            served = versions.routes()
            metrics.publish(served)
            follow = (
                asyncio.create_task(_follow_aliases(service, serving.alias_refresh_s))
                if serving.alias_refresh_s > 0
                else None
            )
            decoding = sorted({slot.engine.precision for slot in versions.slots.values()})
            print(
                f"serving {spec.name} {served} (generation, decoding in {'/'.join(decoding)}) "
                f"on {serving.url}",
                flush=True,
            )
            try:
                yield
            finally:
                if follow is not None:
                    follow.cancel()
                await asyncio.to_thread(versions.stop_all)
                await asyncio.to_thread(log.close)  # every record, then their scoring jobs
                await asyncio.to_thread(scorer.close)

    return lifespan


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


async def _follow_aliases(service: GenerationService, every_s: float) -> None:
    """Follow alias moves made elsewhere (another replica's reload, a CLI rollback)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await reload(service)
        except Exception as exc:  # keep serving what is loaded; say why once per try
            service.metrics.reloads.labels("refused").inc()
            logger.warning("alias refresh failed, still serving what was loaded: %s", exc)
