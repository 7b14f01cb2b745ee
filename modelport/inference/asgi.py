"""The fast path: the inference routes' way in, ahead of the web framework's stack.

Inference requests are the traffic; control-plane requests are few. Through FastAPI, each
inference request also paid for the framework's layers: error and telemetry middleware, the
exception middleware, matching the path against every control-plane route, dependency solving
and query parsing, three wrappers around every `send`. Profiled under load (py-spy, with
benchmarks/bench_gateway.py), that was about half of the gateway's CPU per request, more than
a whole aiohttp pass-through proxy spends. So the inference routes are matched here by exact
path and method, and handed straight to the same route functions, inside the same access log
(RequestContext: request id, route template, status, duration). Nothing else changes: the
FastAPI routes stay declared, document the API in the OpenAPI document, and answer whatever
this does not match (a wrong method, a trailing slash).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from modelport.api.middleware import RequestContext
from modelport.errors import InternalError
from modelport.inference import routes
from modelport.inference.wire_errors import AZURE, OPENAI

log = logging.getLogger("modelport.inference")

Endpoint = Callable[..., Awaitable[Response]]

_OPENAI: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v1/chat/completions"): routes.openai_chat,
    ("POST", "/v1/completions"): routes.openai_completions,
    ("POST", "/v1/embeddings"): routes.openai_embeddings,
    ("POST", "/v1/responses"): routes.openai_responses,
    ("GET", "/v1/models"): routes.openai_models,
}
# /deployments/{name}/<tail>
_AZURE: dict[tuple[str, str], Endpoint] = {
    ("POST", "chat/completions"): routes.azure_chat,
    ("POST", "embeddings"): routes.azure_embeddings,
    ("GET", "info"): routes.azure_info,
}


class FastPath:
    """The inference routes' way in (the docstring above): `match` a scope, then call with the hit."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        endpoints = set(_OPENAI.values()) | set(_AZURE.values())
        # The declared routes, for the access log's route template. Taken from the inference
        # router itself: FastAPI (0.16x) keeps an included router's routes nested, not in app.routes.
        self._routes: dict[Callable[..., Any], BaseRoute] = {
            r.endpoint: r for r in routes.router.routes if isinstance(r, APIRoute) and r.endpoint in endpoints
        }
        if len(self._routes) != len(endpoints):
            raise RuntimeError("the fast path's endpoints and the inference router's routes differ")
        self._logged = RequestContext(self._serve)

    def match(self, scope: Scope) -> tuple[Endpoint, str | None] | None:
        """(route function, deployment name from the URL) or None for everything else."""
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/v1/"):
            endpoint = _OPENAI.get((method, path))
            return (endpoint, None) if endpoint is not None else None
        if path.startswith("/deployments/"):
            name, _, tail = path[len("/deployments/"):].partition("/")
            endpoint = _AZURE.get((method, tail))
            if endpoint is not None and name:
                return endpoint, name
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, hit: tuple[Endpoint, str | None]) -> None:
        scope["app"] = self.app  # what Starlette sets: request.app
        scope["route"] = self._routes.get(hit[0])
        scope["modelport.endpoint"] = hit
        await self._logged(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint, name = scope["modelport.endpoint"]
        started = time.perf_counter()
        request = Request(scope, receive)
        try:
            response = await (endpoint(request) if name is None else endpoint(name, request))
        except Exception:
            # A bug of ours (every ModelportError became a response already). The log keeps the
            # exception type only (logs.JsonFormatter): its message might quote the request.
            log.exception("inference request failed")
            shape = AZURE if name is not None else OPENAI
            response = shape.response(InternalError("The server had an error while processing your request."))
        try:
            await response(scope, receive, send)
        finally:  # a stream is observed at its end, however it ended
            self.app.state.services.metrics.observe_answer(scope.get(routes.DEPLOYMENT), response.status_code,
                                                           time.perf_counter() - started)
