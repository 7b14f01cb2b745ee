"""Maps our exceptions to the control plane's one JSON error shape.

    {"error": {"code": "not_found", "message": "...", "field": null, "details": {}, "request_id": "..."}}

Validation errors name the field and the problem, never the value that was sent (FastAPI's
default 422 echoes the input). Unexpected exceptions become a generic 500 whose message has
nothing of the request in it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from modelport.errors import ModelportError, TooManyRequests

log = logging.getLogger("modelport.api")


def error_body(code: str, message: str, request: Request, *, field: str | None = None,
               details: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field, "details": details or {},
                      "request_id": getattr(request.state, "request_id", None)}}


def describe_validation(exc: RequestValidationError) -> tuple[str, list[dict]]:
    fields = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            loc = "body"  # FastAPI's loc here is ("body", byte offset): the body as a whole is wrong
        else:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        # err["msg"] is pydantic's description of the rule ("Field required", "Input should be
        # a valid integer"); err["input"] is the offending value and is deliberately dropped.
        fields.append({"field": loc, "message": err.get("msg", "invalid"), "type": err.get("type")})
    first = fields[0] if fields else {"field": "body", "message": "invalid request"}
    return f"Invalid request: {first['field']}: {first['message']}.", fields


def error_response(exc: ModelportError, request: Request, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """One of our errors in the control plane's shape, wherever it is answered (the exception
    handler, the request-limit middleware): a 5xx says nothing but the request id, and is logged;
    a 429 says when to retry."""
    out = dict(headers or {})
    if isinstance(exc, TooManyRequests):
        out["Retry-After"] = str(exc.retry_after)
    message = exc.message if exc.status_code < 500 or exc.status_code == 503 else (
        "Internal error; the request id identifies it in the server log.")
    if exc.status_code >= 500:
        log.error("request failed", extra={"error_code": exc.code,
                                            "request_id": getattr(request.state, "request_id", None)})
    return JSONResponse(error_body(exc.code, message, request, field=exc.field, details=exc.details),
                        status_code=exc.status_code, headers=out)


def install(app: FastAPI) -> None:
    @app.exception_handler(ModelportError)
    async def _ours(request: Request, exc: ModelportError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, fields = describe_validation(exc)
        return JSONResponse(error_body("invalid_input", message, request, field=fields[0]["field"] if fields else None,
                                       details={"fields": fields}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "No such route." if exc.status_code == 404 else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app.router.routes, request.scope))
        return JSONResponse(error_body(code, message, request), status_code=exc.status_code, headers=headers or None)


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route takes at this path. Starlette's 405 names only the methods of the
    first route whose path matched, so a path with GET and DELETE routes answered `Allow: GET, HEAD`."""
    contexts = list(iter_route_contexts(routes))
    # The resource is the path template of the first route that matches, as in the document: a
    # literal path (/policies/compliance) is not also the template beside it (/policies/{policy_id}).
    template = next((r.path_format for r in contexts if r.matches(scope)[0] != Match.NONE), None)
    return sorted({m for r in contexts if r.path_format == template for m in (r.methods or ())})
