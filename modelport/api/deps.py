"""Request dependencies: the services container and the calling principal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request

from modelport.api.credentials import bearer
from modelport.catalog.service import CatalogService
from modelport.config import Settings
from modelport.datasets.service import DatasetService
from modelport.db.engine import Database
from modelport.deployments.key_watch import PrivateWeightsWatch
from modelport.deployments.lifecycle import DeploymentLifecycle
from modelport.deployments.service import DeploymentService
from modelport.encryption_keys.service import EncryptionKeyService
from modelport.errors import Forbidden, Unauthenticated
from modelport.finetuning.service import FinetuningService
from modelport.identity.offboarding import Offboarding
from modelport.identity.principal import Principal, PublisherPrincipal
from modelport.identity.service import IdentityService
from modelport.inference.gateway import Gateway
from modelport.marketplace.changes import Marketplace
from modelport.marketplace.offers import OfferService
from modelport.marketplace.publishers import PublisherService
from modelport.marketplace.report import PublisherReports
from modelport.metering.budgets import BudgetService
from modelport.metering.usage import UsageService
from modelport.metrics import Metrics
from modelport.offload import ThreadBudget
from modelport.policies.service import PolicyService
from modelport.quotas.limiter import RateLimiter
from modelport.safety.service import SafetyService

if TYPE_CHECKING:
    from modelport.bootstrap import PrepareResult


@dataclass
class Services:
    settings: Settings
    db: Database
    identity: IdentityService
    catalog: CatalogService
    deployments: DeploymentService  # the rows (control plane)
    gateway: Gateway  # routing table, pools, usage (data plane)
    lifecycle: DeploymentLifecycle  # every change to a deployment, in both planes
    key_watch: PrivateWeightsWatch  # fine-tuned deployments follow their workspace key
    datasets: DatasetService
    encryption_keys: EncryptionKeyService
    safety: SafetyService
    finetuning: FinetuningService
    offboarding: Offboarding
    publishers: PublisherService
    offers: OfferService
    marketplace: Marketplace  # offer and subscription changes, carried to deployments
    usage: UsageService
    budgets: BudgetService
    reports: PublisherReports
    policies: PolicyService
    rate_limiter: RateLimiter
    metrics: Metrics
    #: the threads model scans (imports, rescans) may hold at once: `settings.scan_concurrency`
    scan_budget: ThreadBudget
    #: what `bootstrap.prepare` did on this installation's first call (later calls return it)
    prepared: PrepareResult | None = None


def services(request: Request) -> Services:
    return request.app.state.services


def principal(
    request: Request,
    svc: Annotated[Services, Depends(services)],
    authorization: Annotated[str | None, Header()] = None,
    x_modelport_workspace: Annotated[str | None, Header(description="Platform admins: act in this workspace.")] = None,
) -> Iterator[Principal]:
    token = bearer(authorization)
    if token and token.startswith("mpd_"):
        raise Unauthenticated("Deployment keys call inference routes only; use an API key on /api/v1.")
    if token and token.startswith("mpp_"):
        svc.publishers.authenticate(token)  # a wrong or revoked key is still a 401
        raise Forbidden(PUBLISHER_KEY_HAS_NO_WORKSPACE)
    p = svc.identity.authenticate(token, x_modelport_workspace)
    request.state.principal = p
    # Counted while it runs, so that deleting the workspace waits for it (identity/activity.py).
    with svc.identity.activity.hold(p.workspace_id):
        yield p


PUBLISHER_KEY_HAS_NO_WORKSPACE = ("A publisher API key has no workspace powers; it reaches only its publisher's "
                                  "offers, subscriptions and reports (/api/v1/marketplace/offers, /api/v1/publisher).")


def market_principal(
    request: Request,
    svc: Annotated[Services, Depends(services)],
    authorization: Annotated[str | None, Header()] = None,
    x_modelport_workspace: Annotated[str | None, Header(description="Platform admins: act in this workspace.")] = None,
) -> Iterator[Principal | PublisherPrincipal]:
    """Routes that a publisher key may reach as well as a workspace's API key (offers)."""
    token = bearer(authorization)
    if token and token.startswith("mpp_"):
        yield svc.publishers.authenticate(token)
        return
    yield from principal(request, svc, authorization, x_modelport_workspace)


def publisher_principal(
    svc: Annotated[Services, Depends(services)], authorization: Annotated[str | None, Header()] = None,
) -> PublisherPrincipal:
    """Routes for publisher keys only (the publisher's subscriptions and report)."""
    token = bearer(authorization)
    if not token:
        raise Unauthenticated("Missing publisher API key: send 'Authorization: Bearer <key>'.")
    if not token.startswith("mpp_"):
        raise Forbidden("This route takes a publisher API key ('modelport apikeys create --publisher P --user U').")
    return svc.publishers.authenticate(token)


Svc = Annotated[Services, Depends(services)]
Caller = Annotated[Principal, Depends(principal)]
MarketCaller = Annotated[Principal | PublisherPrincipal, Depends(market_principal)]
PublisherCaller = Annotated[PublisherPrincipal, Depends(publisher_principal)]
