"""Deployment pages: the list, the deploy wizard (keys shown once, with code snippets), a page
per deployment (keys, content filter, usage chart and counts), and deletion."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from modelport.api.routes.deployments import view_out
from modelport.api.routes.models import model_out
from modelport.catalog.service import Filters
from modelport.deployments.schemas import DeploymentCreate, NetworkSettings
from modelport.errors import InvalidInput
from modelport.offload import run_blocking
from modelport.portal import charts
from modelport.portal.web import Me, PortalRoute, Svc, form, redirect, render
from modelport.safety.config import ContentFilterConfig

router = APIRouter(route_class=PortalRoute, include_in_schema=False)
CATEGORIES = ("hate", "sexual", "violence", "self_harm")


def invalid(exc: ValidationError) -> InvalidInput:
    """A form's validation error, naming the field and the rule, never the value sent."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "form"
    return InvalidInput(f"{where}: {err.get('msg', 'invalid')}.", field=where)


@router.get("/deployments")
async def deployments(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    rows = [view_out(v, svc.settings) for v in await svc.lifecycle.list(me)]
    return render(request, "deployments.html", deployments=rows)


@router.get("/deploy")
def deploy_form(request: Request, me: Me, svc: Svc, model: str | None = None) -> HTMLResponse:
    me.require("deployments.write")
    rows, _ = svc.catalog.list(me, Filters(include_deprecated=False), limit=200)
    models = [model_out(m) for m in rows if m.task in ("chat-completion", "embeddings")]
    return render(request, "deploy.html", models=models, selected=model,
                  geographies=list(svc.settings.geographies))


def _int(value: str | None, field: str, default: int) -> int:
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{field} must be a whole number.", field=field) from None


@router.post("/deploy")
async def deploy(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    data = await form(request)
    ranges = [r.strip() for r in (data.get("allowed_ranges") or "").replace(",", "\n").splitlines() if r.strip()]
    try:
        body = DeploymentCreate(
            name=(data.get("name") or "").strip(), model=data.get("model") or "",
            type=data.get("type") or "serverless",
            instances=_int(data.get("instances"), "instances", 1),
            geography=data.get("geography") or None,
            network=NetworkSettings(public_access=data.get("public_access") == "on", allowed_ranges=ranges))
    except ValidationError as exc:
        raise invalid(exc) from None
    # Filter off: refused before anything is created when the caller may not change filters.
    off = ContentFilterConfig(enabled=False) if data.get("content_filter") == "off" else None
    created, view = await svc.lifecycle.create(me, body, content_filter=off)
    d = view_out(view, svc.settings)
    base = str(request.base_url).rstrip("/")
    return render(request, "deployed.html", d=d, primary=created.primary, secondary=created.secondary, base=base)


@router.get("/deployments/{name}")
async def deployment_page(name: str, request: Request, me: Me, svc: Svc) -> HTMLResponse:
    view = await svc.lifecycle.get(me, name)
    usage = await svc.lifecycle.usage(me, name)
    hourly = await svc.lifecycle.usage_by_hour(me, name)
    counts = await run_blocking(svc.safety.counts, view.row.id)
    cf = ContentFilterConfig.model_validate(view.row.content_filter or {})
    bars = charts.bars([(h["hour"].strftime("%H:00"), h["requests"]) for h in hourly])
    out = view_out(view, svc.settings)
    return render(request, "deployment.html", d=out, usage=usage, bars=bars, counts=counts,
                  cf=cf, categories=CATEGORIES, chart=charts)


@router.post("/deployments/{name}/keys")
async def regenerate(name: str, request: Request, me: Me, svc: Svc) -> HTMLResponse:
    data = await form(request)
    which = data.get("which")
    if which not in ("primary", "secondary"):
        raise InvalidInput("Choose the primary or the secondary key.", field="which")
    row, secret = await svc.lifecycle.regenerate_key(me, name, which)
    return render(request, "_newkey.html", which=which, secret=secret, name=row.name)


@router.post("/deployments/{name}/content-filter")
async def content_filter(name: str, request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    # What the form does not show (jailbreak, profanity, backend, judge) is kept as it is.
    cfg: dict[str, Any] = (await svc.lifecycle.content_filter(me, name)).model_dump(mode="json")
    cfg["enabled"] = data.get("enabled") == "on"
    for c in CATEGORIES:
        cfg[c] = {"prompt_threshold": data.get(f"{c}_prompt") or "medium",
                  "completion_threshold": data.get(f"{c}_completion") or "medium",
                  "mode": data.get(f"{c}_mode") or "block"}
    blocklists = [b.strip() for b in (data.get("blocklists") or "").split(",") if b.strip()]
    cfg["blocklists"] = blocklists
    cfg["streaming"] = data.get("streaming") or "buffered"
    try:
        config = ContentFilterConfig.model_validate(cfg)
    except ValidationError as exc:
        raise invalid(exc) from None
    await svc.lifecycle.set_content_filter(me, name, config)
    return redirect(f"/deployments/{name}")


@router.post("/deployments/{name}/delete")
async def delete(name: str, request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    if data.get("confirm") != name:
        raise InvalidInput("Type the deployment's name to confirm its deletion.", field="confirm")
    await svc.lifecycle.delete(me, name)
    return redirect("/deployments")
