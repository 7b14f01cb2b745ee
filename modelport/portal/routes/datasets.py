"""Dataset pages: the list, an upload with a progress bar (portal.js streams the file as the
request body, like the REST API; validation errors come back per line) and deletion."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import anyio.from_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from modelport.portal.web import Me, PortalRoute, Svc, form, redirect, render

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


@router.get("/datasets")
def datasets(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    return render(request, "datasets.html", datasets=svc.datasets.list(me))


@router.post("/datasets/upload")
async def upload(request: Request, me: Me, svc: Svc, name: str = "", format: str = "") -> HTMLResponse:
    """The file is the body (application/octet-stream), CSRF token in X-CSRF-Token: validated and
    encrypted as it arrives, never written in plaintext."""
    fmt = format or None
    length = request.headers.get("content-length")
    await anyio.to_thread.run_sync(svc.datasets.check_upload, me, name, fmt,
                                   int(length) if length and length.isdigit() else None)
    stream = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:
        while (chunk := anyio.from_thread.run(next_chunk)) is not None:
            if chunk:
                yield chunk

    row = await anyio.to_thread.run_sync(svc.datasets.upload, me, name, fmt, chunks())
    return render(request, "_uploaded.html", d=row)


@router.post("/datasets/{ref}/delete")
async def delete(ref: str, request: Request, me: Me, svc: Svc) -> Response:
    await form(request)
    await anyio.to_thread.run_sync(svc.datasets.delete, me, ref)
    return redirect("/datasets")
