"""The web portal: server-rendered pages over the same services and role table as the REST API.

`mount(app)` adds the portal's routes at `/` (the APIs keep /api/v1, /v1 and /deployments/*/...)
and its static files at `/static`. Pages live in `modelport/portal/routes/`, templates in
`templates/`, vendored JavaScript (htmx 4 and its hx-sse extension, Swagger UI) in
`static/vendor/` with their licences; see nav.py for how to add a page.
"""

from __future__ import annotations

import importlib
import inspect

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from modelport.api.deps import Services
from modelport.portal.sessions import SessionStore
from modelport.portal.web import HERE, SECURITY_HEADERS, Portal, render

ROUTE_MODULES = ("auth", "catalog", "deployments", "playground", "datasets", "finetuning", "policies", "marketplace",
                 "workspace", "admin")


class StaticAssets(StaticFiles):
    """Static files with the portal's security headers, cached for an hour."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                for k, v in SECURITY_HEADERS.items():
                    headers.append((k.lower().encode(), v.encode()))
                headers.append((b"cache-control", b"public, max-age=3600"))
            await send(message)

        await super().__call__(scope, receive, with_headers)


API_PREFIXES = ("/api/", "/v1/", "/deployments/", "/openapi.json", "/healthz", "/readyz", "/static/")


def _html_not_found(app: FastAPI) -> None:
    """A browser that asks for a page that does not exist gets the portal's page, not JSON; the
    APIs keep their own 404 shape (the handler installed by modelport.api.errors)."""
    json_handler = app.exception_handlers[StarletteHTTPException]

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # registered for these only
        if (exc.status_code == 404 and "text/html" in request.headers.get("accept", "")
                and not request.url.path.startswith(API_PREFIXES)):
            response = render(request, "error.html", status_code=404, status=404, field=None, details={},
                              message="There is no such page. The navigation above lists what there is.")
            response.headers.update(SECURITY_HEADERS)
            return response
        answer = json_handler(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    app.add_exception_handler(StarletteHTTPException, handler)


def mount(app: FastAPI, services: Services) -> None:
    app.state.portal = Portal(services=services,
                              sessions=SessionStore(services.db, services.identity, services.settings))
    for name in ROUTE_MODULES:
        module = importlib.import_module(f"modelport.portal.routes.{name}")
        app.include_router(module.router)
    app.mount("/static", StaticAssets(directory=HERE / "static"), name="static")
    _html_not_found(app)
