"""The ASGI application: control plane under /api/v1 (inference routes are added by their issue)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from modelport import __version__
from modelport.api import errors
from modelport.api.deps import Services
from modelport.api.middleware import RequestContext
from modelport.api.routes import datasets, deployments, finetuning, identity, models, ops
from modelport.bootstrap import build_services, prepare
from modelport.config import Settings
from modelport.finetuning.runner import JobRunner
from modelport.inference import routes as inference_routes

log = logging.getLogger("modelport.server")


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    svc = services or build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prepare(svc)
        svc.manager.load_routes()
        await svc.manager.start_existing()
        flusher = asyncio.create_task(_flush_last_used(svc))
        background = asyncio.create_task(svc.manager.run_background())
        runner = JobRunner(svc.finetuning, svc.settings)
        jobs = asyncio.create_task(runner.run())
        try:
            yield
        finally:
            await runner.shutdown()
            for task in (flusher, background, jobs):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await svc.manager.shutdown()
            svc.identity.last_used.flush(svc.db)
            svc.db.dispose()

    app = FastAPI(title="modelport", version=__version__, lifespan=lifespan,
                  description="Self-hosted model catalog and Models-as-a-Service. Control plane under /api/v1.")
    app.state.services = svc
    errors.install(app)
    # The inference routes first: routes are matched in order, and these take the traffic.
    app.include_router(inference_routes.router)
    app.include_router(ops.router)
    app.include_router(identity.router)
    app.include_router(models.router)
    app.include_router(deployments.router)
    app.include_router(datasets.router)
    app.include_router(finetuning.router)
    app.add_middleware(RequestContext)
    return app


async def _flush_last_used(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.settings.api_key_last_used_flush_seconds)
        try:
            await asyncio.to_thread(svc.identity.last_used.flush, svc.db)
        except Exception:
            log.exception("could not record API key use")
