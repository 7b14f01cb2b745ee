"""Dataset pages: the list, an upload with a progress bar (portal.js streams the file as the
request body, like the REST API; validation errors come back per line) and deletion."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from modelport.api.routes.datasets import receive_dataset
from modelport.offload import run_blocking
from modelport.portal.web import Me, PortalRoute, Svc, form, redirect, render

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


@router.get("/datasets")
def datasets(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    return render(request, "datasets.html", datasets=svc.datasets.list(me))


@router.post("/datasets/upload")
async def upload(request: Request, me: Me, svc: Svc, name: str = "", format: str = "") -> HTMLResponse:
    """The file is the body (application/octet-stream), CSRF token in X-CSRF-Token: validated and
    encrypted as it arrives, never written in plaintext."""
    row = await receive_dataset(request, svc, me, name, format or None)
    return render(request, "_uploaded.html", d=row)


@router.post("/datasets/{ref}/delete")
async def delete(ref: str, request: Request, me: Me, svc: Svc) -> Response:
    await form(request)
    await run_blocking(svc.datasets.delete, me, ref)
    return redirect("/datasets")
