"""Marketplace and usage pages: offers (prices, terms, contact sharing), an offer's current terms
with a subscribe form, the workspace's subscriptions with unsubscribe, and usage with charges and
budgets. The same OfferService, UsageService and BudgetService as /api/v1/marketplace,
/api/v1/usage and /api/v1/budgets, so the same role checks: every member reads; owners and
contributors subscribe and unsubscribe; owners set budgets.

Subscribing and unsubscribing resume or suspend the workspace's deployments of the offer through
the data plane, exactly as the REST routes do. A refused subscribe (terms changed, consent
missing, a bad contact) re-renders the offer page with the message and the contact as typed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from modelport.api.deps import Services
from modelport.api.routes.marketplace import offer_out, subscription_out
from modelport.errors import Conflict, Forbidden, InvalidInput
from modelport.identity.principal import Principal
from modelport.marketplace.schemas import SubscriptionCreate
from modelport.metering.usage import parse_range
from modelport.offload import run_blocking
from modelport.portal import charts
from modelport.portal.routes.deployments import invalid
from modelport.portal.web import Me, PortalRoute, Svc, form, redirect, render

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

GROUPS = ("deployment", "model", "offer", "day")


def _market(me: Principal, svc: Services) -> dict:
    offers = [offer_out(v) for v in svc.offers.list(me)]
    views = svc.offers.subscriptions(me)
    subs = [subscription_out(v) for v in views]
    # The workspace's deployments each subscription covers: unsubscribing suspends them.
    deps = svc.deployments.list(me) if me.can("deployments.read") else []
    for sub, v in zip(subs, views, strict=True):
        sub["deployments"] = [d.name for d, _ in deps
                              if d.model_id == v.offer.model_id and d.type in (v.offer.deployment_types or [])]
    return {"offers": offers, "subscriptions": subs, "subscribed": {s["offer"]: s for s in subs}}


@router.get("/marketplace")
async def marketplace(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    view = await run_blocking(_market, me, svc)
    return render(request, "marketplace.html", **view)


def _offer_page(request: Request, me: Principal, svc: Services, offer_id: str, status_code: int = 200,
                **ctx: Any) -> HTMLResponse:
    offer = offer_out(svc.offers.get(me, offer_id))
    terms = svc.offers.terms_text(me, offer_id, offer["terms"]["version"])
    subs = [subscription_out(v) for v in svc.offers.subscriptions(me) if v.offer.id == offer["id"]]
    draft = {"name": "", "email": "", "organization": ""}
    draft.update(ctx.pop("draft", {}))
    return render(request, "offer.html", status_code=status_code, offer=offer, terms_text=terms.text,
                  subscription=subs[0] if subs else None, draft=draft, **ctx)


@router.get("/marketplace/offers/{offer_id}")
async def offer(offer_id: str, request: Request, me: Me, svc: Svc) -> HTMLResponse:
    return await run_blocking(_offer_page, request, me, svc, offer_id)


@router.post("/marketplace/offers/{offer_id}/subscribe")
async def subscribe(offer_id: str, request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    me.require("marketplace.subscribe")  # before reading anything the form says
    draft = {k: (data.get(k) or "").strip() for k in ("name", "email", "organization")}
    try:
        try:
            # mypy is told to ignore the next line: the model validates the form
            body = SubscriptionCreate(offer=offer_id, contact=draft,  # type: ignore[arg-type]
                                      accept_terms_sha256=data.get("accept_terms_sha256") or "",
                                      consent_to_share_contact=data.get("consent") == "1")
        except ValidationError as exc:
            err = exc.errors()[0]
            if err.get("loc", ())[:1] == ("accept_terms_sha256",):
                raise InvalidInput("Tick 'I accept these terms' to subscribe.", field="accept_terms_sha256") from None
            raise invalid(exc) from None
        view = await svc.marketplace.subscribe(me, body)
    except (InvalidInput, Conflict) as exc:
        return await run_blocking(_offer_page, request, me, svc, offer_id, exc.status_code, draft=draft,
                                       error=exc.message, error_details=exc.details)
    except Forbidden as exc:
        if exc.field != "consent_to_share_contact":
            raise
        return await run_blocking(_offer_page, request, me, svc, offer_id, exc.status_code, draft=draft,
                                       error=exc.message, error_details=exc.details)
    return redirect(f"/marketplace?subscribed={view.sub.id}#sub-{view.sub.id}")


@router.post("/marketplace/subscriptions/{ref}/cancel")
async def unsubscribe(ref: str, request: Request, me: Me, svc: Svc) -> Response:
    await form(request)
    view, suspended = await svc.marketplace.unsubscribe(me, ref)
    return redirect(f"/marketplace?cancelled={view.sub.id}&suspended={suspended}#sub-{view.sub.id}")


def _when(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"'{name}' must be a date such as 2026-12-01.", field=name) from None
    d = d if d.tzinfo else d.replace(tzinfo=UTC)
    if name == "to" and len(value) == 10:  # a date picked as "to" includes that day
        d += timedelta(days=1)
    return d


def _usage_page(request: Request, me: Principal, svc: Services, status_code: int = 200,
                **ctx: Any) -> HTMLResponse:
    q = request.query_params
    group_by = q.get("group_by") or "deployment"
    if group_by not in GROUPS:
        raise InvalidInput(f"group_by must be one of {', '.join(GROUPS)}.", field="group_by")
    start, end = _when(q.get("from", ""), "from"), _when(q.get("to", ""), "to")
    all_workspaces = q.get("all") == "1" and me.can("platform.usage")  # chargeback, platform admins
    rows = svc.usage.usage(me, start, end, group_by, all_workspaces)  # type: ignore[arg-type]  # checked against GROUPS
    lo, hi = parse_range(start, end)
    totals: dict[str, Decimal] = {}
    for r in rows:
        if r.currency:
            totals[r.currency] = totals.get(r.currency, Decimal(0)) + r.charges
    bars = charts.bars([((f"{r.workspace}: " if r.workspace else "") + r.group, r.input_tokens + r.output_tokens)
                        for r in rows][:60])
    export = {"group_by": group_by, "format": "csv", "from": lo.isoformat(), "to": hi.isoformat()}
    if all_workspaces:
        export["all_workspaces"] = "true"
    budgets = svc.budgets.list(me) if me.can("budgets.read") else []
    return render(request, "usage.html", status_code=status_code, rows=rows, group_by=group_by, groups=GROUPS,
                  start=lo, end=hi, asked={"from": q.get("from", ""), "to": q.get("to", "")}, totals=totals,
                  bars=bars, chart=charts, all_workspaces=all_workspaces,
                  may_see_all=me.can("platform.usage"), export="/api/v1/usage?" + urlencode(export), budgets=budgets,
                  draft=ctx.pop("draft", {}), **ctx)


@router.get("/usage")
async def usage(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    return await run_blocking(_usage_page, request, me, svc)


@router.post("/usage/budgets")
async def set_budget(request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    me.require("budgets.manage")
    draft = {"currency": (data.get("currency") or "").strip().upper(), "amount": (data.get("amount") or "").strip()}
    try:
        if not (len(draft["currency"]) == 3 and draft["currency"].isascii() and draft["currency"].isalpha()):
            raise InvalidInput("Currency must be a three-letter ISO 4217 code such as USD.", field="currency")
        amount = draft["amount"]
        whole, _, frac = amount.partition(".")
        if not (whole.isdigit() and len(whole) <= 12 and (not frac or (frac.isdigit() and len(frac) <= 9))):
            raise InvalidInput("Amount must be a decimal such as 250.00 (per calendar month, UTC).", field="amount")
        await run_blocking(svc.budgets.put, me, draft["currency"], amount)
    except InvalidInput as exc:
        return await run_blocking(_usage_page, request, me, svc, exc.status_code, draft=draft,
                                       error=exc.message, error_details=exc.details)
    return redirect(f"/usage?budget={draft['currency']}#budgets")
