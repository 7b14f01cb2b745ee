"""The workspace page: members and roles, API keys (a new one shown once; revoke), the
workspace key / customer-managed key status, and the audit log with filters."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from modelport.api.deps import Services
from modelport.audit import service as audit
from modelport.errors import InvalidInput
from modelport.identity.principal import Principal
from modelport.identity.roles import Role
from modelport.offload import run_blocking
from modelport.portal.web import Me, PortalRoute, Svc, form, redirect, render

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


def _role(value: str | None) -> Role:
    try:
        return Role(value or "")
    except ValueError:
        raise InvalidInput("role must be reader, contributor or owner.", field="role") from None


def _view(me: Principal, svc: Services, action: str | None, since: str | None) -> dict:
    ctx: dict = {"members": svc.identity.list_members(me), "keys": svc.identity.list_api_keys(me),
                 "wskey": None, "events": None, "action": action or "", "since": since or ""}
    if me.can("encryption_keys.manage"):
        ctx["wskey"] = svc.encryption_keys.workspace_key(me)
    if me.can("audit.read"):
        when = None
        if since:
            try:
                when = datetime.fromisoformat(since)
            except ValueError:
                raise InvalidInput("since must be a date such as 2026-12-01 or 2026-12-01T10:00.",
                                   field="since") from None
        with svc.db.session() as s:
            ctx["events"] = [
                {"at": e.at, "actor": e.actor_user_id, "key": e.actor_key_id, "action": e.action,
                 "resource": f"{e.resource_type or ''} {e.resource_id or ''}".strip(), "outcome": e.outcome,
                 "status": e.status_code, "detail": e.detail or {}}
                for e in audit.query(s, me, action=action or None, since=when, limit=200)]
    return ctx


@router.get("/workspace")
async def workspace(request: Request, me: Me, svc: Svc, action: str | None = None,
                    since: str | None = None) -> HTMLResponse:
    me.require("members.read")
    if action is not None and len(action) > 64:
        raise InvalidInput("The action filter is at most 64 characters.", field="action")
    ctx = await run_blocking(_view, me, svc, action, since)
    return render(request, "workspace.html", **ctx)


@router.post("/workspace/members")
async def add_member(request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    await run_blocking(svc.identity.add_member, me, (data.get("user") or "").strip(), _role(data.get("role")))
    return redirect("/workspace")


@router.post("/workspace/members/{user}")
async def update_member(user: str, request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    if data.get("remove") == "yes":
        await run_blocking(svc.identity.remove_member, me, user)
    else:
        await run_blocking(svc.identity.set_member_role, me, user, _role(data.get("role")))
    return redirect("/workspace")


@router.post("/workspace/apikeys")
async def create_key(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    data = await form(request)
    days = data.get("expires_in_days") or None
    if days is not None and not days.isdigit():
        raise InvalidInput("expires_in_days must be a whole number of days.", field="expires_in_days")
    created = await run_blocking(svc.identity.create_api_key, me, (data.get("name") or "").strip(),
                                      int(days) if days else None)
    return render(request, "apikey_created.html", key=created.row, secret=created.secret)


@router.post("/workspace/apikeys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request, me: Me, svc: Svc) -> Response:
    await form(request)
    await run_blocking(svc.identity.revoke_api_key, me, key_id)
    return redirect("/workspace")
