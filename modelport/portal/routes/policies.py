"""Governance policy pages: the policies in force (save, delete), a "test a request" form, and
compliance of what exists (with enforcement). The same PolicyService as /api/v1/policies, so the
same role checks: every member reads; owners write their workspace's policies and enforce;
platform admins write platform policies (and see compliance of every workspace).

A refused save (Cedar's diagnostic, a `permit`, an id taken) re-renders the page with the message
and the text as typed, so that it can be fixed; role refusals and another workspace's policy
(404) are the portal's error pages.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from modelport.api.deps import Services
from modelport.api.routes.policies import compliance_out, policy_out
from modelport.catalog.service import Filters
from modelport.errors import Conflict, InvalidInput
from modelport.identity.principal import Principal
from modelport.offload import run_blocking
from modelport.policies import compiler, enforcement
from modelport.policies.schemas import PolicyPut, PolicyTest
from modelport.portal.routes.deployments import invalid
from modelport.portal.web import Me, PortalRoute, Svc, form, is_htmx, redirect, render

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

STARTER = """@id("no-public-network")
forbid(principal, action in [Action::"deploy", Action::"update_deployment"], resource)
when { resource.public_network_access };"""


def _scopes(me: Principal) -> list[str]:
    """The scopes this user may write in, in the order the form offers them."""
    out = []
    if me.can("policies.write"):
        out.append("workspace")
    if me.can("platform.policies"):
        out.append("platform")
    return out


def _view(me: Principal, svc: Services) -> dict:
    rows = svc.catalog.list(me, Filters(include_deprecated=False), limit=200)[0] if me.can("models.read") else []
    return {"policies": [policy_out(r, ws) for r, ws in svc.policies.list(me)], "scopes": _scopes(me),
            "actions": compiler.ACTIONS, "models": sorted({m.name for m in rows}),
            "geographies": list(svc.settings.geographies)}


def _page(request: Request, me: Principal, svc: Services, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    view = _view(me, svc)
    draft = {"id": "", "cedar": "", "scope": (view["scopes"] or ["workspace"])[0]}
    draft.update(ctx.pop("draft", {}))
    return render(request, "policies.html", status_code=status_code, draft=draft, starter=STARTER,
                  test=ctx.pop("test", None), asked=ctx.pop("asked", {}), **view, **ctx)


@router.get("/policies")
async def policies(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    return await run_blocking(_page, request, me, svc)


@router.post("/policies")
async def save(request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    policy_id = (data.get("id") or "").strip()
    draft = {"id": policy_id, "cedar": data.get("cedar") or "", "scope": data.get("scope") or "workspace"}
    me.require("platform.policies" if draft["scope"] == "platform" else "policies.write")  # before any parsing
    try:
        try:
            # mypy is told to ignore the next line: the model validates the form
            body = PolicyPut(cedar=draft["cedar"], scope=draft["scope"])  # type: ignore[arg-type]
        except ValidationError as exc:
            raise invalid(exc) from None
        await run_blocking(svc.policies.put, me, policy_id, body)
    except (InvalidInput, Conflict) as exc:  # shown beside the text, which stays as typed
        return await run_blocking(_page, request, me, svc, exc.status_code, draft=draft, error=exc.message,
                                       error_details=exc.details)
    return redirect(f"/policies?saved={policy_id}#policy-{policy_id}")


@router.post("/policies/{policy_id}/delete")
async def delete(policy_id: str, request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    scope = data.get("scope") or "workspace"
    if scope not in ("workspace", "platform"):
        raise InvalidInput("scope must be workspace or platform.", field="scope")
    compiler.check_id(policy_id, saving=False)
    await run_blocking(svc.policies.delete, me, policy_id, scope)
    return redirect("/policies")


@router.post("/policies/test")
async def test(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    """The decision on a described request, from the same service as POST /api/v1/policies/test
    (nothing is written)."""
    data = await form(request)
    asked = {k: (data.get(k) or "").strip() for k in ("action", "model", "type", "geography")}
    try:
        # mypy is told to ignore the next line: form values, validated
        req = PolicyTest(action=asked["action"] or "deploy", model=asked["model"] or None,  # type: ignore[arg-type]
                         # mypy is told to ignore the next line: form values, validated
                         type=asked["type"] or None, geography=asked["geography"] or None)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise invalid(exc) from None
    decision, _ = await run_blocking(svc.policies.test, me, req)
    result = {"decision": "allow" if decision.allowed else "deny", "denied_by": list(decision.denied_by),
              "audited_by": list(decision.audited_by)}
    if is_htmx(request):
        return render(request, "_policy_test.html", test=result, asked=asked)
    return await run_blocking(_page, request, me, svc, test=result, asked=asked)


def _all(request: Request, me: Principal) -> bool:
    return request.query_params.get("all") == "1" and me.can("platform.policies")


def _compliance_page(request: Request, me: Principal, svc: Services, all_workspaces: bool,
                     **ctx: Any) -> HTMLResponse:
    version, found = svc.policies.compliance(me, all_workspaces)
    c = compliance_out(version, found)
    for item, v in zip(c["items"], found, strict=True):
        item["own"] = v.workspace_id == me.workspace_id  # links only to this workspace's pages
    return render(request, "compliance.html", c=c, all_workspaces=all_workspaces, **ctx)


@router.get("/policies/compliance")
async def compliance(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    return await run_blocking(_compliance_page, request, me, svc, _all(request, me))


@router.post("/policies/compliance/enforce")
async def enforce(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    data = await form(request)
    all_workspaces = data.get("all") == "1"
    _, found, suspended, resumed = await enforcement.enforce(svc.policies, svc.lifecycle, me, all_workspaces)
    names = {v.id: v.name for v in found}
    return await run_blocking(_compliance_page, request, me, svc, all_workspaces, enforced=True,
                                   suspended=[names.get(i, i) for i in suspended], resumed=resumed)
