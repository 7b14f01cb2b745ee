"""Routes: publishers, offers, subscriptions, and what publishers see. Thin: parse, call, shape.

Changes that reach deployments (offers created, priced or retired, terms retired, subscriptions
made or cancelled) go through `marketplace.changes.Marketplace`, which the portal uses too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import Response

from modelport.api.deps import Caller, MarketCaller, PublisherCaller, Svc
from modelport.marketplace.offers import OfferView, SubscriptionView
from modelport.marketplace.report import report_csv
from modelport.marketplace.schemas import (
    OfferCreate,
    OfferOut,
    OfferPrices,
    PublisherCreate,
    PublisherKeyCreate,
    PublisherKeyCreated,
    PublisherKeyOut,
    PublisherOut,
    PublisherSubscriptionOut,
    PublisherUpdate,
    PublisherUserAdd,
    ReportOut,
    SubscriptionCreate,
    SubscriptionOut,
    TermsIn,
    TermsTextOut,
)
from modelport.offload import run_blocking

router = APIRouter(prefix="/api/v1")


def offer_out(v: OfferView) -> dict:
    current = next((t for t in reversed(v.terms) if t.retired_at is None), v.terms[-1])

    def terms(t) -> dict:
        return {"version": t.version, "sha256": t.sha256, "created_at": t.created_at, "retired_at": t.retired_at,
                "current": t.id == current.id}

    o = v.offer
    return {"id": o.id, "model": v.model.name, "model_id": v.model.id, "publisher": v.publisher.name,
            "currency": o.currency, "input_price": o.input_price, "output_price": o.output_price,
            "contact_sharing_required": o.contact_sharing_required, "deployment_types": o.deployment_types,
            "state": o.state, "terms": terms(current), "terms_versions": [terms(t) for t in v.terms],
            "created_at": o.created_at, "retired_at": o.retired_at}


def subscription_out(v: SubscriptionView) -> dict:
    sub = v.sub
    state = sub.state if sub.state != "active" or v.usable else "terms_retired"
    return {"id": sub.id, "offer": v.offer.id, "model": v.model.name, "publisher": v.publisher.name, "state": state,
            "terms_version": sub.terms_version, "terms_sha256": sub.terms_sha256,
            "contact": {"name": sub.contact_name, "email": sub.contact_email,
                        "organization": sub.contact_organization},
            "consent_at": sub.consent_at, "consent_user_id": sub.consent_user_id, "accepted_at": sub.accepted_at,
            "accepted_by": sub.accepted_by, "created_at": sub.created_at, "cancelled_at": sub.cancelled_at}


# -- publishers (platform admins; a publisher key reads its own) ----------------------------------

@router.post("/publishers", response_model=PublisherOut, status_code=status.HTTP_201_CREATED,
             name="publisher.create")
def create_publisher(body: PublisherCreate, caller: Caller, svc: Svc) -> dict:
    p = svc.publishers.create(caller, body.name, body.display_name)
    return {"id": p.id, "name": p.name, "display_name": p.display_name, "users": [], "created_at": p.created_at}


@router.get("/publishers", response_model=list[PublisherOut], name="publisher.list")
def list_publishers(caller: Caller, svc: Svc) -> list[dict]:
    return [{"id": p.id, "name": p.name, "display_name": p.display_name, "created_at": p.created_at}
            for p in svc.publishers.list(caller)]


@router.get("/publishers/{ref}", response_model=PublisherOut, name="publisher.read")
def get_publisher(ref: str, caller: MarketCaller, svc: Svc) -> dict:
    p, users = svc.publishers.get(caller, ref)
    return {"id": p.id, "name": p.name, "display_name": p.display_name, "users": users, "created_at": p.created_at}


@router.patch("/publishers/{ref}", response_model=PublisherOut, name="publisher.update")
def update_publisher(ref: str, body: PublisherUpdate, caller: Caller, svc: Svc) -> dict:
    p = svc.publishers.update(caller, ref, body.name, body.display_name)
    return get_publisher(p.id, caller, svc)


@router.delete("/publishers/{ref}", status_code=status.HTTP_204_NO_CONTENT, name="publisher.delete")
def delete_publisher(ref: str, caller: Caller, svc: Svc) -> None:
    svc.publishers.delete(caller, ref)


@router.post("/publishers/{ref}/users", response_model=PublisherOut, status_code=status.HTTP_201_CREATED,
             name="publisher.user.add")
def add_publisher_user(ref: str, body: PublisherUserAdd, caller: Caller, svc: Svc) -> dict:
    svc.publishers.add_user(caller, ref, body.user)
    return get_publisher(ref, caller, svc)


@router.post("/publishers/{ref}/apikeys", response_model=PublisherKeyCreated, status_code=status.HTTP_201_CREATED,
             name="publisher.apikey.create")
def create_publisher_key(ref: str, body: PublisherKeyCreate, caller: Caller, svc: Svc) -> dict:
    row, secret = svc.publishers.create_key(caller, ref, body.user, body.name)
    return {"id": row.id, "name": row.name, "publisher_id": row.publisher_id, "user_id": row.user_id,
            "created_at": row.created_at, "key": secret}


@router.get("/publishers/{ref}/apikeys", response_model=list[PublisherKeyOut], name="publisher.apikey.list")
def list_publisher_keys(ref: str, caller: Caller, svc: Svc) -> list[PublisherKeyOut]:
    return [PublisherKeyOut.model_validate(k, from_attributes=True) for k in svc.publishers.list_keys(caller, ref)]


@router.delete("/publishers/{ref}/apikeys/{key_id}", response_model=PublisherKeyOut, name="publisher.apikey.revoke")
def revoke_publisher_key(ref: str, key_id: str, caller: Caller, svc: Svc) -> PublisherKeyOut:
    return PublisherKeyOut.model_validate(svc.publishers.revoke_key(caller, key_id, ref), from_attributes=True)


# -- offers --------------------------------------------------------------------------------------

@router.post("/marketplace/offers", response_model=OfferOut, status_code=status.HTTP_201_CREATED,
             name="offer.create")
async def create_offer(body: OfferCreate, caller: MarketCaller, svc: Svc) -> dict:
    # deployments made before the model was sold stop until their workspace subscribes
    return offer_out(await svc.marketplace.create_offer(caller, body))


@router.get("/marketplace/offers", response_model=list[OfferOut], name="offer.list")
def list_offers(caller: MarketCaller, svc: Svc) -> list[dict]:
    return [offer_out(v) for v in svc.offers.list(caller)]


@router.get("/marketplace/offers/{offer}", response_model=OfferOut, name="offer.read")
def get_offer(offer: str, caller: MarketCaller, svc: Svc) -> dict:
    return offer_out(svc.offers.get(caller, offer))


@router.get("/marketplace/offers/{offer}/terms/{version}", response_model=TermsTextOut, name="offer.terms.read")
def get_terms(offer: str, version: str, caller: MarketCaller, svc: Svc) -> dict:
    t = svc.offers.terms_text(caller, offer, version)
    return {"version": t.version, "sha256": t.sha256, "text": t.text}


@router.patch("/marketplace/offers/{offer}", response_model=OfferOut, name="offer.prices")
async def set_offer_prices(offer: str, body: OfferPrices, caller: MarketCaller, svc: Svc) -> dict:
    """New prices for the requests that start from now (each request is charged at the prices in
    force when it started)."""
    return offer_out(await svc.marketplace.set_prices(caller, offer, body))


@router.post("/marketplace/offers/{offer}/retire", response_model=OfferOut, name="offer.retire")
async def retire_offer(offer: str, caller: MarketCaller, svc: Svc) -> dict:
    return offer_out(await svc.marketplace.retire_offer(caller, offer))


@router.post("/marketplace/offers/{offer}/terms", response_model=OfferOut, status_code=status.HTTP_201_CREATED,
             name="offer.terms.create")
def add_terms(offer: str, body: TermsIn, caller: MarketCaller, svc: Svc) -> dict:
    return offer_out(svc.offers.add_terms(caller, offer, body))


@router.post("/marketplace/offers/{offer}/terms/{version}/retire", response_model=OfferOut,
             name="offer.terms.retire")
async def retire_terms(offer: str, version: str, caller: MarketCaller, svc: Svc) -> dict:
    return offer_out(await svc.marketplace.retire_terms(caller, offer, version))


# -- subscriptions (workspaces) ------------------------------------------------------------------

@router.post("/marketplace/subscriptions", response_model=SubscriptionOut, status_code=status.HTTP_201_CREATED,
             name="subscription.create")
async def subscribe(body: SubscriptionCreate, caller: Caller, svc: Svc) -> dict:
    return subscription_out(await svc.marketplace.subscribe(caller, body))


@router.get("/marketplace/subscriptions", response_model=list[SubscriptionOut], name="subscription.list")
def list_subscriptions(caller: Caller, svc: Svc) -> list[dict]:
    return [subscription_out(v) for v in svc.offers.subscriptions(caller)]


@router.get("/marketplace/subscriptions/{ref}", response_model=SubscriptionOut, name="subscription.read")
def get_subscription(ref: str, caller: Caller, svc: Svc) -> dict:
    return subscription_out(svc.offers.subscription(caller, ref))


@router.delete("/marketplace/subscriptions/{ref}", response_model=SubscriptionOut, name="subscription.cancel")
async def unsubscribe(ref: str, caller: Caller, svc: Svc) -> dict:
    view, _ = await svc.marketplace.unsubscribe(caller, ref)
    return subscription_out(view)


# -- what a publisher sees (P3) -------------------------------------------------------------------

@router.get("/publisher/subscriptions", response_model=list[PublisherSubscriptionOut],
            name="publisher.subscriptions")
def publisher_subscriptions(caller: PublisherCaller, svc: Svc, offer: str | None = None) -> list:
    return svc.reports.subscriptions(caller, offer)


@router.get("/publisher/report", response_model=ReportOut, response_model_by_alias=True, name="publisher.report",
            responses={200: {"content": {"text/csv": {}}}})
async def publisher_report(
    caller: PublisherCaller, svc: Svc,
    start: Annotated[datetime | None, Query(alias="from", description="Start (rounded down to its hour).")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="End, exclusive.")] = None,
    offer: str | None = None, format: Literal["json", "csv"] = "json",
) -> ReportOut | Response:
    report = await run_blocking(svc.reports.report, caller, start, end, offer)
    if format == "csv":
        return Response(report_csv(report), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="publisher-report.csv"'})
    return report
