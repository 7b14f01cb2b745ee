"""Offer and subscription changes together with what they do to deployments: the one thing the
REST routes and the portal call for them.

Each method changes rows through `OfferService` (in a worker thread), then carries the change to
the deployments through `DeploymentLifecycle`: a new offer suspends the deployments made before
the model was sold until their workspace subscribes; new prices or a retired offer reach the
routing table at once; retiring a terms version suspends the deployments of the subscriptions
that accepted it; subscribing resumes a workspace's deployments of the offer and unsubscribing
suspends them (reason `subscription`, beside any other reason a deployment is suspended for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.marketplace.offers import SUSPENDED_FOR_SUBSCRIPTION, OfferService, OfferView, SubscriptionView
from modelport.offload import run_blocking

if TYPE_CHECKING:
    from modelport.deployments.lifecycle import DeploymentLifecycle
    from modelport.identity.principal import Principal, PublisherPrincipal
    from modelport.marketplace.schemas import OfferCreate, OfferPrices, SubscriptionCreate

REASON = "subscription"


class Marketplace:
    def __init__(self, offers: OfferService, lifecycle: DeploymentLifecycle) -> None:
        self.offers, self.lifecycle = offers, lifecycle

    async def create_offer(self, actor: Principal | PublisherPrincipal, req: OfferCreate) -> OfferView:
        view = await run_blocking(self.offers.create, actor, req)
        unsubscribed = await run_blocking(self.offers.unsubscribed_deployments, view.offer.id)
        await self._suspend(unsubscribed, view)
        await self.lifecycle.prices_changed(view.model.id)
        return view

    async def set_prices(self, actor: Principal | PublisherPrincipal, ref: str, prices: OfferPrices) -> OfferView:
        view = await run_blocking(self.offers.set_prices, actor, ref, prices)
        await self.lifecycle.prices_changed(view.model.id)
        return view

    async def retire_offer(self, actor: Principal | PublisherPrincipal, ref: str) -> OfferView:
        view = await run_blocking(self.offers.retire, actor, ref)
        await self.lifecycle.prices_changed(view.model.id)
        return view

    async def retire_terms(self, actor: Principal | PublisherPrincipal, ref: str, version: str) -> OfferView:
        view, deployments = await run_blocking(self.offers.retire_terms, actor, ref, version)
        await self._suspend(deployments, view)
        return view

    async def subscribe(self, actor: Principal, req: SubscriptionCreate) -> SubscriptionView:
        view, deployments = await run_blocking(self.offers.subscribe, actor, req)
        await self.lifecycle.resume_all(deployments, REASON)
        return view

    async def unsubscribe(self, actor: Principal, ref: str) -> tuple[SubscriptionView, int]:
        """Returns the subscription and how many deployments were suspended."""
        view, deployments = await run_blocking(self.offers.unsubscribe, actor, ref)
        await self._suspend(deployments, view)
        return view, len(deployments)

    async def _suspend(self, deployments: list[str], view: OfferView | SubscriptionView) -> None:
        await self.lifecycle.suspend_all(deployments, REASON, SUSPENDED_FOR_SUBSCRIPTION.format(offer=view.offer.id))
