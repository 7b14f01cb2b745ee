"""Errors in each inference API's own shape. Messages never contain prompt or output text.

OpenAI (/v1):       {"error": {"message", "type", "param", "code"}}
Azure (/deployments): {"error": {"code", "message", "status", "details"}}
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from modelport.errors import ModelportError, RateLimited, TooManyRequests

log = logging.getLogger("modelport.inference")

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}


def _public_message(exc: ModelportError) -> str:
    if exc.status_code >= 500 and exc.status_code != 503:
        return "The server had an error while processing your request."
    return exc.message


def _headers(exc: ModelportError) -> dict[str, str]:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after), "retry-after-ms": str(exc.retry_after_ms), **exc.headers}
    return {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else {}


def _content_filter(exc: ModelportError) -> JSONResponse | None:
    """A blocked prompt answers in the one content-filter shape (Azure's) on both APIs."""
    from modelport.safety.screening import ContentFiltered, error_body

    if isinstance(exc, ContentFiltered):
        return JSONResponse(error_body(exc.verdict, param=exc.field or "prompt"), status_code=400)
    return None


def openai_error(exc: ModelportError) -> JSONResponse:
    if (blocked := _content_filter(exc)) is not None:
        return blocked
    if exc.status_code >= 500:
        log.warning("inference error", extra={"error_code": exc.code, "status": exc.status_code})
    body = {"error": {"message": _public_message(exc), "type": OPENAI_TYPES.get(exc.status_code, "server_error"),
                      "param": exc.field, "code": exc.details.get("openai_code", exc.code)}}
    return JSONResponse(body, status_code=exc.status_code, headers=_headers(exc))


def azure_error(exc: ModelportError) -> JSONResponse:
    if (blocked := _content_filter(exc)) is not None:
        return blocked
    if exc.status_code >= 500:
        log.warning("inference error", extra={"error_code": exc.code, "status": exc.status_code})
    body = {"error": {"code": exc.details.get("azure_code", exc.code), "message": _public_message(exc),
                      "status": exc.status_code, "param": exc.field}}
    return JSONResponse(body, status_code=exc.status_code, headers=_headers(exc))
