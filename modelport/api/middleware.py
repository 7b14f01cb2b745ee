"""Request ids, the access log and audit records of refused control-plane writes.

A pure ASGI middleware (BaseHTTPMiddleware costs far more per request). The access log holds
the route template, never the raw path or query string, so ids and names typed by users in
URLs stay out of the log; bodies and headers are never read here.
"""

from __future__ import annotations

import logging
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.audit import service as audit
from modelport.offload import run_blocking

log = logging.getLogger("modelport.access")


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            log.info("request", extra={"request_id": request_id, "method": scope["method"], "route": template,
                                       "status": status,
                                       "duration_ms": round((time.perf_counter() - started) * 1000, 2)})
            if (status >= 400 and scope["method"] not in ("GET", "HEAD", "OPTIONS")
                    and template.startswith("/api/v1")):
                # A database write: on a worker thread, never on the event loop.
                await run_blocking(self._audit_refusal, scope, route, status, request_id)

    def _audit_refusal(self, scope: Scope, route: object, status: int, request_id: str) -> None:
        state = scope.get("state", {})
        principal = state.get("principal")
        app = scope.get("app")
        if principal is None or app is None:
            return  # unauthenticated calls have no actor to record
        action = getattr(route, "name", None) or "unknown"
        outcome = "denied" if status in (401, 403, 404) else "failed"
        try:
            with app.state.services.db.session() as s:
                audit.record(s, principal, action, outcome=outcome, status_code=status, request_id=request_id)
        except Exception:  # the audit of a refusal must never turn it into a 500
            log.exception("could not write audit record", extra={"request_id": request_id})
