"""Platform admin pages: workspaces, users, the platform key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from modelport.api.deps import Services
from modelport.identity.principal import Principal
from modelport.offload import run_blocking
from modelport.portal.web import Me, PortalRoute, Svc, form, redirect, render

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


def _view(me: Principal, svc: Services) -> dict:
    me.require("platform.workspaces")
    return {"workspaces": svc.identity.list_workspaces(me), "users": svc.identity.list_users(me),
            "platform_key": svc.encryption_keys.platform_key(me)}


@router.get("/admin")
async def admin(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    return render(request, "admin.html", **await run_blocking(_view, me, svc))


@router.post("/admin/workspaces")
async def create_workspace(request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    await run_blocking(svc.identity.create_workspace, me, (data.get("name") or "").strip(),
                            (data.get("description") or "").strip(), (data.get("owner") or "").strip() or None)
    return redirect("/admin")


@router.post("/admin/users")
async def create_user(request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    await run_blocking(svc.identity.create_user, me, (data.get("name") or "").strip(),
                            (data.get("email") or "").strip() or None, False)
    return redirect("/admin")


@router.post("/admin/users/{ref}")
async def set_user(ref: str, request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    await run_blocking(svc.identity.set_user_disabled, me, ref, data.get("disabled") == "yes")
    return redirect("/admin")
