"""Errors in each inference API's own shape, one mapping per API. Messages never contain prompt
or output text.

OpenAI (/v1):         {"error": {"message", "type", "param", "code"}}
Azure (/deployments): {"error": {"code", "message", "status", "param"}}

A blocked prompt answers in the one content-filter shape (Azure's) on both. `ErrorShape.body` is
the JSON object (also what a stream sends when it fails after its first byte); `response` the
HTTP answer, with `Retry-After` (and `retry-after-ms`, the rate limiter's headers) on a 429.
"""

from __future__ import annotations

import logging
from typing import Any

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


def _content_filter(exc: ModelportError) -> dict[str, Any] | None:
    """A blocked prompt's body (the one content-filter shape), or None for any other error."""
    from modelport.safety.screening import ContentFiltered, error_body

    if isinstance(exc, ContentFiltered):
        return error_body(exc.verdict, param=exc.field or "prompt")
    return None


class ErrorShape:
    """One inference API's errors on the wire; `fields` is what differs between the APIs."""

    def fields(self, exc: ModelportError) -> dict[str, Any]:
        raise NotImplementedError

    def body(self, exc: ModelportError) -> dict[str, Any]:
        blocked = _content_filter(exc)
        if blocked is not None:
            return blocked
        if exc.status_code >= 500:
            log.warning("inference error", extra={"error_code": exc.code, "status": exc.status_code})
        return {"error": self.fields(exc)}

    def response(self, exc: ModelportError) -> JSONResponse:
        blocked = _content_filter(exc)
        if blocked is not None:
            return JSONResponse(blocked, status_code=400)
        return JSONResponse(self.body(exc), status_code=exc.status_code, headers=_headers(exc))


class OpenAIErrors(ErrorShape):
    def fields(self, exc: ModelportError) -> dict[str, Any]:
        return {"message": _public_message(exc), "type": OPENAI_TYPES.get(exc.status_code, "server_error"),
                "param": exc.field, "code": exc.details.get("openai_code", exc.code)}


class AzureErrors(ErrorShape):
    def fields(self, exc: ModelportError) -> dict[str, Any]:
        return {"code": exc.details.get("azure_code", exc.code), "message": _public_message(exc),
                "status": exc.status_code, "param": exc.field}


OPENAI = OpenAIErrors()
AZURE = AzureErrors()
