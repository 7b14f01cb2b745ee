"""Catalog pages: search and filters, a model's page (card, files, scan report), downloads."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from modelport.api.responses import VerifiedDownload
from modelport.api.routes.models import model_out
from modelport.catalog.downloads import VerifiedRead
from modelport.catalog.service import Filters
from modelport.errors import InvalidInput
from modelport.offload import run_blocking
from modelport.portal.web import Me, PortalRoute, Svc, render

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


def _param(request: Request, name: str, max_len: int = 100) -> str | None:
    v = (request.query_params.get(name) or "").strip()
    if len(v) > max_len:
        raise InvalidInput(f"The {name} filter is at most {max_len} characters.", field=name)
    return v or None


@router.get("/catalog")
def catalog(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    f = Filters(q=_param(request, "q"), task=_param(request, "task"), format=_param(request, "format"),
                license=_param(request, "license"), publisher=_param(request, "publisher"),
                owner=_param(request, "owner"))
    rows, nxt = svc.catalog.list(me, f, limit=100, cursor=_param(request, "cursor", 400))
    next_query = None
    if nxt:
        params = {k: v for k, v in request.query_params.items() if k != "cursor" and v}
        next_query = urlencode({**params, "cursor": nxt})
    return render(request, "catalog.html", models=[model_out(m) for m in rows], f=f, next_cursor=nxt,
                  next_query=next_query)


@router.get("/catalog/{name}")
def model_page(name: str, request: Request, me: Me, svc: Svc) -> HTMLResponse:
    return render(request, "model.html", m=model_out(svc.catalog.get(me, name), detail=True))


@router.get("/catalog/{name}/download")
async def download(name: str, me: Me, svc: Svc, file: str | None = None) -> VerifiedDownload:
    """The same verified download as the REST API (P13), for the signed-in user."""
    found = await run_blocking(svc.catalog.download_file, me, name, None, file)
    return VerifiedDownload(VerifiedRead(found))
