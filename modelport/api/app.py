"""The ASGI application: control plane under /api/v1 (inference routes are added by their issue)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from modelport import __version__, portal
from modelport.api import errors, openapi
from modelport.api.deps import Services
from modelport.api.middleware import RequestContext
from modelport.api.request_limits import RequestBodyLimit
from modelport.api.routes import (
    datasets,
    deployments,
    encryption_keys,
    finetuning,
    identity,
    marketplace,
    models,
    ops,
    policies,
    safety,
    usage,
)
from modelport.bootstrap import build_services, prepare
from modelport.config import Settings
from modelport.finetuning.runner import JobRunner
from modelport.inference import routes as inference_routes
from modelport.inference.asgi import FastPath
from modelport.offload import run_blocking

log = logging.getLogger("modelport.server")


class ModelportApp(FastAPI):
    """FastAPI, with the inference routes taken ahead of its middleware stack (inference/asgi.py)."""

    fast_path: FastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_path is not None and (hit := self.fast_path.match(scope)) is not None:
            await self.fast_path(scope, receive, send, hit)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    svc = services or build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prepare(svc)
        await svc.offboarding.resume()  # workspace deletions a stopped server left unfinished
        svc.gateway.usage.meter.start()
        await run_blocking(svc.budgets.load)
        await svc.lifecycle.start_existing()
        if svc.settings.content_filter_default == "on":
            # Load the default classifier now rather than on the first filtered request.
            svc.gateway.spawn(_warm_safety(svc))
        flusher = asyncio.create_task(_flush_last_used(svc))
        sweeper = asyncio.create_task(_expire_uploads(svc))
        background = asyncio.create_task(svc.gateway.run_background())
        key_watch = asyncio.create_task(svc.key_watch.run())
        meters = asyncio.create_task(_aggregate_meters(svc))
        runner = JobRunner(svc.finetuning, svc.settings)
        jobs = asyncio.create_task(runner.run())
        try:
            yield
        finally:
            await runner.shutdown()
            for task in (flusher, sweeper, background, key_watch, jobs, meters):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await svc.gateway.shutdown()
            await svc.rate_limiter.close()
            svc.identity.last_used.flush(svc.db)
            svc.safety.flush_counts()
            svc.db.dispose()

    # /docs is the portal's (vendored Swagger UI, no CDN); FastAPI's own pages load from a CDN.
    app = ModelportApp(title="modelport", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                       description="Self-hosted model catalog and Models-as-a-Service. Control plane under /api/v1.")
    app.state.services = svc
    errors.install(app)
    openapi.install(app)  # every status each route can answer, in its error shape (api/openapi.py)
    app.include_router(ops.router)
    app.include_router(identity.router)
    app.include_router(models.router)
    app.include_router(deployments.router)
    app.include_router(datasets.router)
    app.include_router(encryption_keys.router)
    app.include_router(safety.router)
    app.include_router(finetuning.router)
    app.include_router(marketplace.router)
    app.include_router(usage.router)
    app.include_router(policies.router)
    app.include_router(inference_routes.router)
    portal.mount(app, svc)  # the web portal at / (modelport/portal)
    app.add_middleware(RequestBodyLimit)  # inside RequestContext: its refusals are logged with a request id
    app.add_middleware(RequestContext)
    app.fast_path = FastPath(app)
    return app


async def _flush_last_used(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.settings.api_key_last_used_flush_seconds)
        try:
            await run_blocking(svc.identity.last_used.flush, svc.db)
            await run_blocking(svc.safety.flush_counts)
        except Exception:
            log.exception("could not record API key use or content-filter counts")


async def _aggregate_meters(svc: Services) -> None:
    """Usage events into the hourly meters, and budgets' spending reloaded (other replicas' too)."""
    while True:
        await asyncio.sleep(svc.settings.meter_aggregate_seconds)
        try:
            await run_blocking(svc.usage.refresh)
            await run_blocking(svc.budgets.load)
        except Exception:
            log.exception("could not aggregate usage into the meters")


async def _expire_uploads(svc: Services) -> None:
    """Stale uploads go while the server runs, not only at the next start: staged model uploads
    past their expiry, and what a crash left of a dataset upload in the datastore."""
    while True:
        await asyncio.sleep(svc.settings.upload_sweep_seconds)
        try:
            models = await run_blocking(svc.catalog.expire_uploads)
            datasets = await run_blocking(svc.datasets.collect_stale_uploads, svc.settings.upload_ttl_seconds)
            if models or datasets:
                log.info("expired stale uploads", extra={"event": "uploads.expired", "count": models + datasets})
        except Exception:
            log.exception("could not expire stale uploads")


async def _warm_safety(svc: Services) -> None:
    """Load the default classifier and run it once: the backend loads its model lazily, so
    creating it alone left the load (0.6 s with the cached graph, ~7 s the first time) to the
    first filtered request."""
    try:
        started = time.perf_counter()
        backend = await svc.safety.backend("minilm")
        await backend.analyze(["warm up"])
        log.info("content-filter classifier ready",
                 extra={"event": "safety.ready", "duration_ms": round((time.perf_counter() - started) * 1000)})
    except Exception:  # requests to filtered deployments will answer 503 and say why
        log.exception("could not load the content-filter classifier")
