"""Offers and subscriptions: the commercial side of the catalog.

An offer sells one catalog-wide model for the deployment types it covers, at prices per 1,000
input and output tokens (Decimal, one currency), under versioned terms identified by their
sha256, and says whether subscribers must consent to share their contact with the publisher.
The platform admin or the model's publisher creates and retires it.

A workspace subscribes once per offer (an owner or contributor): it gives the contact to share,
accepts the current terms (their sha256 is recorded) and, where the offer requires it, consents
to share the contact (time and user recorded). A deployment of an offered model needs an
active subscription (409 `subscription_required` otherwise); unsubscribing suspends the
workspace's deployments of that offer, and subscribing again resumes them. When the publisher
retires a terms version, subscriptions that accepted it stop serving until they accept the
current one. Everything here is audited. Models without an offer need nothing (sold directly).

The services change rows; the routes hand the returned deployment ids to the data plane
(`DeploymentLifecycle.suspend` / `resume`), which stops and starts workers.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from modelport.audit import service as audit
from modelport.db.base import new_id, utcnow
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Deployment, Offer, OfferTerms, Publisher, Subscription
from modelport.errors import Conflict, Forbidden, InvalidInput, NotFound
from modelport.identity.principal import Principal, PublisherPrincipal
from modelport.marketplace.schemas import OfferCreate, OfferPrices, SubscriptionCreate, TermsIn
from modelport.policies.facts import ModelFacts

if TYPE_CHECKING:
    from modelport.policies.engine import PolicyEngine

NO_OFFER = "No offer has that id; 'modelport marketplace offers' lists them."
SUSPENDED_FOR_SUBSCRIPTION = (
    "This deployment's marketplace subscription is not active (cancelled, or the terms it accepted were retired); "
    "subscribe again with 'modelport marketplace subscribe {offer}' and it resumes."
)


class SubscriptionRequired(Conflict):
    """A deployment of an offered model without an active subscription (409)."""

    code = "subscription_required"


def subscribe_command(offer: Offer) -> str:
    """The command that subscribes to `offer`, with --consent where the offer requires it (without
    it the subscription is refused)."""
    consent = " --consent" if offer.contact_sharing_required else ""
    return f"modelport marketplace subscribe {offer.id} --name NAME --email EMAIL --accept-terms{consent}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def offer_for_model(s: Session, model_id: str) -> Offer | None:
    """The offer a model is sold under: its active one, else its newest retired one (existing
    subscriptions to a retired offer keep working)."""
    offers = list(s.scalars(select(Offer).where(Offer.model_id == model_id).order_by(Offer.created_at.desc())))
    return next((o for o in offers if o.state == "active"), offers[0] if offers else None)


def offer_id_of(s: Session, model_id: str) -> str:
    """The id of the offer a model is sold under, "" when none (governance's `resource.offer`)."""
    offer = offer_for_model(s, model_id)
    return offer.id if offer is not None else ""


def current_terms(s: Session, offer_id: str) -> OfferTerms:
    return s.scalars(select(OfferTerms).where(OfferTerms.offer_id == offer_id, OfferTerms.retired_at.is_(None))
                     # mypy is told to ignore the next line: an offer always has current terms
                     .order_by(OfferTerms.created_at.desc(), OfferTerms.id.desc())).first()  # type: ignore[return-value]


def usable_subscription(s: Session, workspace_id: str, offer_id: str) -> Subscription | None:
    """The workspace's active subscription to the offer, if the terms it accepted still hold."""
    sub = s.scalar(select(Subscription).where(Subscription.workspace_id == workspace_id,
                                              Subscription.offer_id == offer_id, Subscription.state == "active"))
    if sub is None:
        return None
    terms = s.scalar(select(OfferTerms).where(OfferTerms.offer_id == offer_id,
                                              OfferTerms.version == sub.terms_version))
    if terms is None or terms.retired_at is not None:
        return None
    return sub


def check_deployable(s: Session, workspace_id: str, model: CatalogModel, dep_type: str) -> None:
    """A deployment of an offered model needs its type covered and an active subscription."""
    offer = offer_for_model(s, model.id)
    if offer is None:
        return
    if dep_type not in (offer.deployment_types or []):
        raise InvalidInput(f"Model '{model.name}' is offered for {', '.join(offer.deployment_types)} deployments "
                           "only.", field="type")
    if usable_subscription(s, workspace_id, offer.id) is None:
        raise SubscriptionRequired(
            f"Model '{model.name}' is sold under offer {offer.id}; this workspace needs an active subscription to "
            f"it first: {subscribe_command(offer)}",
            field="model", details={"offer": offer.id, "command": subscribe_command(offer)})


@dataclass(frozen=True)
class OfferView:
    offer: Offer
    model: CatalogModel
    publisher: Publisher
    terms: list[OfferTerms]  # oldest first; the last one not retired is current


@dataclass(frozen=True)
class SubscriptionView:
    sub: Subscription
    offer: Offer
    model: CatalogModel
    publisher: Publisher
    usable: bool


def _price(value: str, field: str) -> Decimal:
    price = Decimal(value)
    if price < 0:
        raise InvalidInput(f"{field} must not be negative.", field=field)
    return price


class OfferService:
    def __init__(self, db: Database, policies: PolicyEngine | None = None) -> None:
        self.db = db
        self.policies = policies  # governance: `subscribe` is a governed action

    def summaries(self, model_ids: list[str]) -> dict[str, dict]:
        """The offer each model is sold under, as the catalog shows it (models without: absent)."""
        out: dict[str, dict] = {}
        with self.db.session() as s:
            for model_id in model_ids:
                offer = offer_for_model(s, model_id)
                if offer is not None:
                    out[model_id] = {"id": offer.id, "currency": offer.currency,
                                     "input_price": str(offer.input_price), "output_price": str(offer.output_price),
                                     "deployment_types": offer.deployment_types, "state": offer.state,
                                     "contact_sharing_required": offer.contact_sharing_required}
        return out

    # -- offers (platform admin or the model's publisher) -----------------------------------

    def _may_manage(self, actor: Principal | PublisherPrincipal, publisher_id: str) -> None:
        if isinstance(actor, PublisherPrincipal):
            if actor.publisher_id != publisher_id:
                raise NotFound(NO_OFFER)
        else:
            actor.require("platform.offers")

    @staticmethod
    def _check_role(actor: Principal | PublisherPrincipal) -> None:
        """A platform principal needs platform.offers, refused before any lookup (the answer tells
        nothing of an id); a publisher's rights are checked on the offer (`_managed`)."""
        if isinstance(actor, Principal):
            actor.require("platform.offers")

    def _managed(self, s: Session, actor: Principal | PublisherPrincipal, ref: str, *,
                 changing: str | None = None) -> Offer:
        """The offer `ref` that `actor` manages (404 otherwise, another publisher's included); with
        `changing`, it must still be active (409 naming what no longer changes)."""
        offer = s.get(Offer, ref)
        if offer is None:
            raise NotFound(NO_OFFER)
        self._may_manage(actor, offer.publisher_id)
        if changing is not None and offer.state != "active":
            raise Conflict(f"This offer is retired; its {changing} no longer change.")
        return offer

    def create(self, actor: Principal | PublisherPrincipal, req: OfferCreate) -> OfferView:
        if isinstance(actor, Principal):
            actor.require("platform.offers")
        with self.db.session() as s:
            q = select(CatalogModel).where(CatalogModel.scope_key == "",
                                           (CatalogModel.name == req.model) | (CatalogModel.id == req.model))
            if req.model_version:
                q = q.where(CatalogModel.version == req.model_version)
            if isinstance(actor, PublisherPrincipal):
                q = q.where(CatalogModel.publisher_id == actor.publisher_id)
            model = s.scalars(q.order_by(CatalogModel.created_at.desc())).first()
            if model is None:
                raise NotFound("No catalog-wide model of that name is published by this publisher; offers sell "
                               "catalog-wide models only.", field="model")
            if model.publisher_id is None:
                raise Conflict("This model has no publisher record; a platform admin sets one first.", field="model")
            if s.scalar(select(Offer.id).where(Offer.model_id == model.id, Offer.state == "active")):
                raise Conflict(f"Model '{model.name}' already has an active offer; retire it first.", field="model")
            bad = sorted(set(req.deployment_types) - set(model.deployment_types or []))
            if bad:
                raise InvalidInput(f"Model '{model.name}' cannot be deployed as {', '.join(bad)}.",
                                   field="deployment_types")
            offer = Offer(id=new_id("offer"), model_id=model.id, publisher_id=model.publisher_id,
                          currency=req.currency, input_price=_price(req.input_price, "input_price"),
                          output_price=_price(req.output_price, "output_price"),
                          contact_sharing_required=req.contact_sharing_required,
                          deployment_types=sorted(set(req.deployment_types)), state="active",
                          created_by=actor.user_id)
            s.add(offer)
            s.flush()
            s.add(OfferTerms(offer_id=offer.id, version=req.terms.version, text=req.terms.text,
                             sha256=sha256_text(req.terms.text)))
            self._audit(s, actor, "offer.create", offer.id, {"model": model.id, "currency": offer.currency,
                                                             "input_price": str(offer.input_price),
                                                             "output_price": str(offer.output_price)})
            return self._view(s, offer)

    def unsubscribed_deployments(self, offer_id: str) -> list[str]:
        """Deployments of the offer's model (types it covers) whose workspace has no usable
        subscription: made before the offer existed, they are suspended until one subscribes."""
        with self.db.session() as s:
            offer = s.get_one(Offer, offer_id)
            rows = s.execute(select(Deployment.id, Deployment.workspace_id).where(
                Deployment.model_id == offer.model_id, Deployment.type.in_(offer.deployment_types or [])))
            return [dep for dep, ws in rows if usable_subscription(s, ws, offer.id) is None]

    def _audit(self, s: Session, actor: Principal | PublisherPrincipal, action: str, offer_id: str,
               detail: dict | None = None) -> None:
        if isinstance(actor, PublisherPrincipal):
            # a publisher acts outside any workspace: its user and key go in the detail
            audit.record(s, None, action, resource_type="offer", resource_id=offer_id,
                         detail={**(detail or {}), "publisher": actor.publisher_id, "actor_user": actor.user_id,
                                 "actor_key": actor.key_id})
        else:
            audit.record(s, actor, action, resource_type="offer", resource_id=offer_id, detail=detail)

    def _view(self, s: Session, offer: Offer) -> OfferView:
        terms = list(s.scalars(select(OfferTerms).where(OfferTerms.offer_id == offer.id)
                               .order_by(OfferTerms.created_at, OfferTerms.id)))
        return OfferView(offer, s.get_one(CatalogModel, offer.model_id), s.get_one(Publisher, offer.publisher_id),
                         terms)

    def _visible(self, s: Session, actor: Principal | PublisherPrincipal, ref: str) -> Offer:
        offer = s.get(Offer, ref)
        if offer is None:
            raise NotFound(NO_OFFER)
        if isinstance(actor, PublisherPrincipal):
            if offer.publisher_id != actor.publisher_id:
                raise NotFound(NO_OFFER)
        elif not actor.is_platform_admin:
            actor.require("marketplace.read")
            if offer.state != "active" and not s.scalar(select(Subscription.id).where(
                    Subscription.workspace_id == actor.workspace_id, Subscription.offer_id == offer.id)):
                raise NotFound(NO_OFFER)
        return offer

    def list(self, actor: Principal | PublisherPrincipal) -> list[OfferView]:
        """Publisher keys: their own offers; platform admins: all; workspaces: the active ones."""
        with self.db.session() as s:
            q = select(Offer).order_by(Offer.created_at)
            if isinstance(actor, PublisherPrincipal):
                q = q.where(Offer.publisher_id == actor.publisher_id)
            elif not actor.is_platform_admin:
                actor.require("marketplace.read")
                q = q.where(Offer.state == "active")
            return [self._view(s, o) for o in s.scalars(q)]

    def get(self, actor: Principal | PublisherPrincipal, ref: str) -> OfferView:
        with self.db.session() as s:
            return self._view(s, self._visible(s, actor, ref))

    def terms_text(self, actor: Principal | PublisherPrincipal, ref: str, version: str) -> OfferTerms:
        with self.db.session() as s:
            offer = self._visible(s, actor, ref)
            terms = s.scalar(select(OfferTerms).where(OfferTerms.offer_id == offer.id, OfferTerms.version == version))
            if terms is None:
                raise NotFound("This offer has no terms of that version.")
            return terms

    def retire(self, actor: Principal | PublisherPrincipal, ref: str) -> OfferView:
        """No new subscriptions; existing ones keep working under the terms they accepted."""
        self._check_role(actor)
        with self.db.session() as s:
            offer = self._managed(s, actor, ref)
            if offer.state != "retired":
                offer.state, offer.retired_at = "retired", utcnow()
                self._audit(s, actor, "offer.retire", offer.id)
            return self._view(s, offer)

    def set_prices(self, actor: Principal | PublisherPrincipal, ref: str, prices: OfferPrices) -> OfferView:
        """New prices for requests that start from now; earlier requests keep theirs (each usage
        event carries the prices in force when its request started)."""
        if prices.input_price is None and prices.output_price is None:
            raise InvalidInput("Give input_price, output_price or both.", field="input_price")
        self._check_role(actor)
        with self.db.session() as s:
            offer = self._managed(s, actor, ref, changing="prices")
            old = {"input_price": str(offer.input_price), "output_price": str(offer.output_price)}
            if prices.input_price is not None:
                offer.input_price = _price(prices.input_price, "input_price")
            if prices.output_price is not None:
                offer.output_price = _price(prices.output_price, "output_price")
            self._audit(s, actor, "offer.prices", offer.id, {"old": old, "new": {
                "input_price": str(offer.input_price), "output_price": str(offer.output_price)}})
            return self._view(s, offer)

    def add_terms(self, actor: Principal | PublisherPrincipal, ref: str, terms: TermsIn) -> OfferView:
        """A new terms version: new subscriptions accept it; existing ones keep theirs until retired."""
        self._check_role(actor)
        with self.db.session() as s:
            offer = self._managed(s, actor, ref, changing="terms")
            s.add(OfferTerms(offer_id=offer.id, version=terms.version, text=terms.text, sha256=sha256_text(terms.text)))
            try:
                s.flush()
            except SAIntegrityError as exc:
                raise Conflict("This offer already has terms of that version; choose a new version.",
                               field="version") from exc
            self._audit(s, actor, "offer.terms.create", offer.id, {"version": terms.version})
            return self._view(s, offer)

    def retire_terms(self, actor: Principal | PublisherPrincipal, ref: str,
                     version: str) -> tuple[OfferView, builtins.list[str]]:
        """Retire an old terms version. Returns the deployments whose subscriptions accepted it:
        they stop serving until their workspace accepts the current terms."""
        self._check_role(actor)
        with self.db.session() as s:
            offer = self._managed(s, actor, ref)
            terms = s.scalar(select(OfferTerms).where(OfferTerms.offer_id == offer.id, OfferTerms.version == version))
            if terms is None:
                raise NotFound("This offer has no terms of that version.")
            if terms.retired_at is None:
                if current_terms(s, offer.id).id == terms.id:
                    raise Conflict("These are the offer's current terms; publish a newer version before retiring "
                                   "them.", field="version")
                terms.retired_at = utcnow()
                self._audit(s, actor, "offer.terms.retire", offer.id, {"version": version})
            s.flush()
            subs = s.scalars(select(Subscription).where(Subscription.offer_id == offer.id,
                                                        Subscription.state == "active",
                                                        Subscription.terms_version == version))
            deps = [d for sub in subs for d in _deployments_of(s, sub.workspace_id, offer)]
            return self._view(s, offer), deps

    # -- subscriptions (workspaces) ---------------------------------------------------------

    def subscribe(self, actor: Principal, req: SubscriptionCreate) -> tuple[SubscriptionView, builtins.list[str]]:
        """Subscribe (or subscribe again). Returns the workspace's deployments of the offer, which
        resume if they were suspended for their subscription."""
        actor.require("marketplace.subscribe")
        with self.db.session() as s:
            offer = s.get(Offer, req.offer)
            if offer is None:
                raise NotFound(NO_OFFER, field="offer")
            sub = s.scalar(select(Subscription).where(Subscription.workspace_id == actor.workspace_id,
                                                      Subscription.offer_id == offer.id))
            if offer.state != "active" and (sub is None or sub.state != "active"):
                raise NotFound(NO_OFFER, field="offer")  # retired: no new subscriptions
            if self.policies is not None:  # 403 policy_denied when a policy forbids it, before any write
                model = s.get_one(CatalogModel, offer.model_id)
                self.policies.enforce(actor, "subscribe", ModelFacts.seen_by(model, actor, offer=offer.id))
            terms = current_terms(s, offer.id)
            if req.accept_terms_sha256 != terms.sha256:
                raise Conflict(f"The offer's current terms are version {terms.version} (sha256 {terms.sha256}); "
                               "read them ('modelport marketplace show OFFER') and accept that sha256.",
                               field="accept_terms_sha256", details={"terms_version": terms.version,
                                                                     "terms_sha256": terms.sha256})
            if offer.contact_sharing_required and not req.consent_to_share_contact:
                raise Forbidden("This offer requires your consent to share the contact with its publisher (usage "
                                "volume and charges go with it, never prompts or outputs); send "
                                "consent_to_share_contact: true (--consent).", field="consent_to_share_contact")
            now = utcnow()
            created = sub is None
            if sub is None:
                sub = Subscription(id=new_id("sub"), workspace_id=actor.workspace_id, offer_id=offer.id)
                s.add(sub)
            sub.state = "active"
            sub.terms_version, sub.terms_sha256 = terms.version, terms.sha256
            sub.contact_name, sub.contact_email = req.contact.name, req.contact.email
            sub.contact_organization = req.contact.organization
            sub.accepted_at, sub.accepted_by = now, actor.user_id
            sub.consent_at = now if req.consent_to_share_contact else None
            sub.consent_user_id = actor.user_id if req.consent_to_share_contact else None
            sub.cancelled_at = None
            s.flush()
            audit.record(s, actor, "subscription.create" if created else "subscription.renew",
                         resource_type="subscription", resource_id=sub.id,
                         detail={"offer": offer.id, "terms_version": terms.version, "terms_sha256": terms.sha256})
            audit.record(s, actor, "subscription.consent" if req.consent_to_share_contact else
                         "subscription.consent.withheld", resource_type="subscription", resource_id=sub.id,
                         detail={"offer": offer.id, "at": now.isoformat()})
            return self._sub_view(s, sub), _deployments_of(s, actor.workspace_id, offer)

    def unsubscribe(self, actor: Principal, ref: str) -> tuple[SubscriptionView, builtins.list[str]]:
        """Cancel; returns the workspace's deployments of the offer, which are suspended."""
        actor.require("marketplace.subscribe")
        with self.db.session() as s:
            sub = self._own_sub(s, actor, ref)
            if sub.state != "cancelled":
                sub.state, sub.cancelled_at = "cancelled", utcnow()
                audit.record(s, actor, "subscription.cancel", resource_type="subscription", resource_id=sub.id,
                             detail={"offer": sub.offer_id})
            offer = s.get_one(Offer, sub.offer_id)
            return self._sub_view(s, sub), _deployments_of(s, actor.workspace_id, offer)

    def _own_sub(self, s: Session, actor: Principal, ref: str) -> Subscription:
        sub = s.scalar(select(Subscription).where(Subscription.workspace_id == actor.workspace_id,
                                                  (Subscription.id == ref) | (Subscription.offer_id == ref)))
        if sub is None:
            raise NotFound("This workspace has no subscription of that id or to that offer.")
        return sub

    def subscriptions(self, actor: Principal) -> builtins.list[SubscriptionView]:
        actor.require("marketplace.read")
        with self.db.session() as s:
            subs = s.scalars(select(Subscription).where(Subscription.workspace_id == actor.workspace_id)
                             .order_by(Subscription.created_at))
            return [self._sub_view(s, sub) for sub in subs]

    def subscription(self, actor: Principal, ref: str) -> SubscriptionView:
        actor.require("marketplace.read")
        with self.db.session() as s:
            return self._sub_view(s, self._own_sub(s, actor, ref))

    def _sub_view(self, s: Session, sub: Subscription) -> SubscriptionView:
        offer = s.get_one(Offer, sub.offer_id)
        usable = usable_subscription(s, sub.workspace_id, offer.id) is not None
        return SubscriptionView(sub, offer, s.get_one(CatalogModel, offer.model_id),
                                s.get_one(Publisher, offer.publisher_id), usable)

    def publisher_subscriptions(self, actor: PublisherPrincipal) -> Sequence[Subscription]:
        with self.db.session() as s:
            return s.scalars(select(Subscription).join(Offer, Offer.id == Subscription.offer_id)
                             .where(Offer.publisher_id == actor.publisher_id)
                             .order_by(Subscription.created_at)).all()


def _deployments_of(s: Session, workspace_id: str, offer: Offer) -> list[str]:
    return list(s.scalars(select(Deployment.id).where(Deployment.workspace_id == workspace_id,
                                                      Deployment.model_id == offer.model_id,
                                                      Deployment.type.in_(offer.deployment_types or []))))
