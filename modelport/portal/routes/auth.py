"""Sign-in (API key or one-time link), sign-out, the start page and the REST reference (/docs)."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from modelport.errors import Forbidden, Unauthenticated
from modelport.portal.sessions import COOKIE
from modelport.portal.web import (
    PortalRoute,
    _read_form,
    check_origin,
    current,
    portal,
    redirect,
    render,
    set_session_cookie,
)

router = APIRouter(route_class=PortalRoute, include_in_schema=False)
PRESESSION = "mp_signin"  # double-submit token of the sign-in form (there is no session yet)


def _safe_next(value: str | None) -> str:
    """Only a path of this site (never //host or a scheme): no open redirect after sign-in."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/catalog"


def _signin_page(request: Request, message: str | None = None, status_code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    resp = render(request, "signin.html", status_code=status_code, message=message, presession=token,
                  next=_safe_next(request.query_params.get("next")))
    resp.set_cookie(PRESESSION, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                    path="/signin", max_age=3600)
    return resp


@router.get("/signin")
def signin_form(request: Request) -> HTMLResponse:
    return _signin_page(request)


@router.post("/signin")
async def signin(request: Request) -> Response:
    check_origin(request)
    data = await _read_form(request)
    cookie = request.cookies.get(PRESESSION) or ""
    if not cookie or not hmac.compare_digest(cookie, data.get("csrf_token") or ""):
        raise Forbidden("The sign-in form expired or came from another site; reload it and sign in again.")
    store = portal(request).sessions
    store.end(request.cookies.get(COOKIE))  # a new session every sign-in: no fixation
    try:
        cur = store.sign_in_with_key(data.get("api_key") or "")
    except Unauthenticated as exc:
        return _signin_page(request, exc.message, 401)
    resp = redirect(_safe_next(data.get("next")))
    set_session_cookie(request, resp, cur)
    resp.delete_cookie(PRESESSION, path="/signin")
    return resp


@router.get("/signin/link/{token}")
def signin_link(token: str, request: Request) -> Response:
    """The one-time link. A GET that signs in: it is only ever typed or clicked by the admin it
    was printed for, and it works once; the next page is a redirect, so the token leaves the
    address bar (and Referrer-Policy: same-origin keeps it out of any other site's Referer)."""
    store = portal(request).sessions
    store.end(request.cookies.get(COOKIE))
    cur = store.redeem_link(token)
    resp = redirect("/catalog")
    set_session_cookie(request, resp, cur)
    return resp


@router.post("/signout")
async def signout(request: Request) -> Response:
    cur = await current(request)  # CSRF-checked like every write
    portal(request).sessions.end(cur.token)
    resp = redirect("/signin")
    resp.delete_cookie(COOKIE, path="/")
    return resp


@router.get("/")
def home(request: Request) -> Response:
    return redirect("/catalog")


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    """Swagger UI from vendored files; its start-up code is a file too (no inline script)."""
    return render(request, "docs.html")
