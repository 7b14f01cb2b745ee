"""The web portal: server-rendered pages over the same services and role table as the REST API.

`mount(app)` adds the portal's routes at `/` (the APIs keep /api/v1, /v1 and /deployments/*/...)
and its static files at `/static`. Pages live in `modelport/portal/routes/`, templates in
`templates/`, vendored JavaScript (htmx 4 and its hx-sse extension, Swagger UI) in
`static/vendor/` with their licences; see nav.py for how to add a page.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from modelport.api.deps import Services
from modelport.portal.sessions import SessionStore
from modelport.portal.web import HERE, SECURITY_HEADERS, Portal

ROUTE_MODULES = ("auth", "catalog", "deployments", "playground", "datasets", "finetuning", "workspace", "admin")


class StaticAssets(StaticFiles):
    """Static files with the portal's security headers, cached for an hour."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                for k, v in SECURITY_HEADERS.items():
                    headers.append((k.lower().encode(), v.encode()))
                headers.append((b"cache-control", b"public, max-age=3600"))
            await send(message)

        await super().__call__(scope, receive, with_headers)


def mount(app: FastAPI, services: Services) -> None:
    app.state.portal = Portal(services=services,
                              sessions=SessionStore(services.db, services.identity, services.settings))
    for name in ROUTE_MODULES:
        module = importlib.import_module(f"modelport.portal.routes.{name}")
        app.include_router(module.router)
    app.mount("/static", StaticAssets(directory=HERE / "static"), name="static")
