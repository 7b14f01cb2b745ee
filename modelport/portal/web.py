"""The portal's request plumbing: the signed-in browser, CSRF, security headers, rendering, errors.

Every portal route is a `PortalRoute`: its answers carry the Content-Security-Policy (`'self'`,
no inline script, no eval), and a `ModelportError` raised by a service becomes a readable page
(or, for an htmx request, a message swapped into the page's alert region) with the error's own
status. Unexpected exceptions become a generic page; nothing of the request is echoed.

Writes (any method but GET/HEAD) need the session's CSRF token, from the form field `csrf_token`
or the `X-CSRF-Token` header (portal.js adds it to htmx requests), and an Origin, when the
browser sends one, equal to the server's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import ImmutableMultiDict

from modelport.api.deps import Services
from modelport.audit import service as audit
from modelport.errors import Forbidden, InvalidInput, ModelportError, PayloadTooLarge, Unauthenticated
from modelport.identity.principal import Principal
from modelport.offload import run_blocking
from modelport.portal import nav
from modelport.portal.markdown import render_markdown
from modelport.portal.sessions import COOKIE, Current, SessionStore, csrf_matches

log = logging.getLogger("modelport.portal")

HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
MAX_FORM_BYTES = 256 * 1024
SAFE_METHODS = ("GET", "HEAD")


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"




def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["markdown"] = render_markdown
    env.filters["size"] = human_size
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else ""
    env.globals["nav"] = nav.entries
    return env


TEMPLATES = _environment()


@dataclass
class Portal:
    """What the portal keeps on the app: the services and the session store."""

    services: Services
    sessions: SessionStore


def portal(request: Request) -> Portal:
    return request.app.state.portal


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(request: Request, template: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    current: Current | None = getattr(request.state, "portal_session", None)
    body = TEMPLATES.get_template(template).render(
        request=request, me=current.principal if current else None, csrf=current.csrf if current else "",
        path=request.url.path, services=portal(request).services, **ctx)
    return HTMLResponse(body, status_code=status_code)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def signin_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return redirect("/signin?next=" + quote(target, safe=""))


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in page, htmx requests are told to."""


async def current(request: Request) -> Current:
    store = portal(request).sessions
    cur = await run_blocking(store.current, request.cookies.get(COOKIE))  # a database read and write
    if cur is None:
        raise SignInRequired()
    request.state.portal_session = cur
    request.state.principal = cur.principal  # the access log and audit of refusals name the actor
    if request.method not in SAFE_METHODS:
        check_origin(request)
        sent = request.headers.get("x-csrf-token")
        if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            request.state.form = await _read_form(request)
            sent = request.state.form.get("csrf_token")
        if not csrf_matches(cur.token, sent):
            raise Forbidden("This form has expired or did not come from this portal (CSRF check); reload the page "
                            "and try again.")
    return cur


def check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin != own:
        raise Forbidden("This request came from another site and was refused (CSRF check).")


async def form(request: Request) -> ImmutableMultiDict:
    """The urlencoded form of a write (already read, and CSRF-checked, by `current`)."""
    cached = getattr(request.state, "form", None)
    return cached if cached is not None else await _read_form(request)


async def _read_form(request: Request) -> ImmutableMultiDict:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"A portal form is at most {MAX_FORM_BYTES // 1024} KB.")
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=500, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("The form could not be read; reload the page and try again.", field="form") from exc
    return ImmutableMultiDict(pairs)


def principal(request: Request, cur: Annotated[Current, Depends(current)]) -> Iterator[Principal]:
    # Counted while it runs, like an API request, so that deleting the workspace waits for it.
    with portal(request).services.identity.activity.hold(cur.principal.workspace_id):
        yield cur.principal


Me = Annotated[Principal, Depends(principal)]


def svc(request: Request) -> Services:
    return portal(request).services


Svc = Annotated[Services, Depends(svc)]


def error_response(request: Request, status: int, message: str, field: str | None = None,
                   details: dict | None = None) -> Response:
    if is_htmx(request):
        resp = render(request, "_alert.html", status_code=status, message=message, details=details or {})
        resp.headers["HX-Retarget"] = "#alerts"
        resp.headers["HX-Reswap"] = "innerHTML"
        return resp
    return render(request, "error.html", status_code=status, status=status, message=message, field=field,
                  details=details or {})


class PortalRoute(APIRoute):
    """Security headers on every answer; errors as pages, never as JSON or a stack trace."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                if is_htmx(request):
                    response = Response(status_code=401, headers={"HX-Redirect": "/signin"})
                elif request.method in SAFE_METHODS:
                    response = signin_redirect(request)
                else:
                    response = error_response(request, 401, "Your session has ended; sign in again.")
                response.delete_cookie(COOKIE, path="/")
            except Unauthenticated as exc:
                response = error_response(request, 401, exc.message)
            except ModelportError as exc:
                if exc.status_code >= 500 and exc.status_code != 503:
                    log.error("portal request failed", extra={"error_code": exc.code})
                    message = "Internal error; the request id identifies it in the server log."
                else:
                    message = exc.message
                response = error_response(request, exc.status_code, message, exc.field, exc.details)
            except Exception as exc:
                log.error("unhandled portal error", exc_info=exc)
                response = error_response(request, 500, "Internal error; the request id identifies it in the "
                                                         "server log.")
            for k, v in SECURITY_HEADERS.items():
                response.headers.setdefault(k, v)
            response.headers.setdefault("Cache-Control", "no-store")
            if request.method not in SAFE_METHODS and response.status_code >= 400:
                await run_blocking(self._audit_refusal, request, response.status_code)
            return response

        return route

    def _audit_refusal(self, request: Request, status: int) -> None:
        """A refused or failed portal write is audited like one on the REST API (the actor, the
        route, the status; nothing of the request)."""
        principal = getattr(request.state, "principal", None)
        if principal is None:
            return  # no session: no actor to record
        outcome = "denied" if status in (401, 403, 404) else "failed"
        try:
            with portal(request).services.db.session() as s:
                audit.record(s, principal, f"portal.{self.name}"[:64],
                             outcome=outcome, status_code=status,
                             request_id=getattr(request.state, "request_id", None))
        except Exception:  # the audit of a refusal must never turn it into a 500
            log.exception("could not write audit record")


def set_session_cookie(request: Request, response: Response, cur: Current) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, cur.token, httponly=True, samesite="strict", secure=secure, path="/",
                        max_age=int(portal(request).sessions.absolute.total_seconds()))
