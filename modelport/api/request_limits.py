"""Control-plane request bodies: the caller is authenticated before a body is read, and a body
is read only up to `max_control_request_bytes`.

FastAPI reads a JSON body in full before it resolves any dependency, the principal included:
without this, an unauthenticated 200 MB POST was read into memory before its 401. So, in front
of the application, for every request that carries a body:

1. under /api/v1, the API key must authenticate before a byte of the body is read (401, and the
   connection is closed, otherwise); the route's own dependency authenticates again (cached);
2. a declared Content-Length beyond the limit answers 413 at once, unread;
3. the body is read into memory up to the limit (413 the moment it passes it) and handed to the
   application only then.

The streaming upload routes (model files, datasets) are exempt from 2 and 3: they never hold a
body in memory, and check their own limits (declared sizes, MODELPORT_MAX_DATASET_BYTES) as the
bytes stream in. A refusal here closes the connection, so an unread body is never parsed as the
next request. Inference routes never come here (inference/asgi.py); they authenticate before
reading and have their own limit (MODELPORT_MAX_REQUEST_BYTES).
"""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api.credentials import bearer
from modelport.api.errors import error_response
from modelport.errors import ModelportError, PayloadTooLarge, Unauthenticated
from modelport.offload import run_blocking

#: Routes that stream their body and enforce their own limits.
_STREAMING = (("PUT", re.compile(r"/api/v1/model-uploads/[^/]+/files/.+")),
              ("POST", re.compile(r"/api/v1/datasets")),
              ("POST", re.compile(r"/datasets/upload")))  # the portal's dataset upload (its session first)


def _has_body(scope: Scope) -> tuple[bool, int | None]:
    """(whether the request carries a body, its declared length if any)."""
    length: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
    return chunked or bool(length), length


class RequestBodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        has_body, length = _has_body(scope)
        if not has_body:
            await self.app(scope, receive, send)
            return
        settings = scope["app"].state.services.settings
        path, method = scope["path"], scope["method"]
        if path.startswith("/api/v1/") and (refusal := await self._unauthenticated(scope)) is not None:
            await refusal(scope, receive, send)
            return
        if any(method == m and pattern.fullmatch(path) for m, pattern in _STREAMING):
            await self.app(scope, receive, send)
            return
        limit = settings.max_control_request_bytes
        if length is not None and length > limit:
            await _too_large(scope, limit)(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before it finished sending
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await _too_large(scope, limit)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _unauthenticated(scope: Scope) -> JSONResponse | None:
        """The 401 for a request whose key does not authenticate; None when it does (or when the
        refusal is another one, such as a workspace the key may not name: the route gives it)."""
        request = Request(scope)
        svc = scope["app"].state.services
        try:
            token = bearer(request.headers.get("authorization"))
            if token and token.startswith("mpd_"):
                raise Unauthenticated("Deployment keys call inference routes only; use an API key on /api/v1.")
            if token and token.startswith("mpp_"):  # a publisher key (the route decides what it may reach)
                await run_blocking(svc.publishers.authenticate, token)
            else:
                await run_blocking(svc.identity.authenticate, token,
                                               request.headers.get("x-modelport-workspace"))
        except Unauthenticated as exc:
            return error_response(exc, request, headers={"Connection": "close"})
        except ModelportError:
            return None
        return None


def _too_large(scope: Scope, limit: int) -> JSONResponse:
    """413 in the control plane's error shape; the connection closes (the rest is never read)."""
    message = (f"The request body is larger than the {limit} bytes this server accepts "
               "(MODELPORT_MAX_CONTROL_REQUEST_BYTES).")
    return error_response(PayloadTooLarge(message), Request(scope), headers={"Connection": "close"})
