"""Request dependencies: the services container and the calling principal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request

from modelport.catalog.service import CatalogService
from modelport.config import Settings
from modelport.datasets.service import DatasetService
from modelport.db.engine import Database
from modelport.deployments.service import DeploymentService
from modelport.encryption_keys.service import KeyService
from modelport.errors import Unauthenticated
from modelport.finetuning.service import FinetuningService
from modelport.identity.offboarding import Offboarding
from modelport.identity.principal import Principal
from modelport.identity.service import IdentityService
from modelport.inference.manager import DeploymentManager
from modelport.metrics import Metrics
from modelport.policies.service import PolicyService
from modelport.quotas.limiter import RateLimiter
from modelport.safety.service import SafetyService


@dataclass
class Services:
    settings: Settings
    db: Database
    identity: IdentityService
    catalog: CatalogService
    deployments: DeploymentService
    manager: DeploymentManager
    datasets: DatasetService
    keys: KeyService
    safety: SafetyService
    finetuning: FinetuningService
    offboarding: Offboarding
    policies: PolicyService
    rate_limiter: RateLimiter
    metrics: Metrics
    extra: dict[str, object] = field(default_factory=dict)  # later subsystems register here


def services(request: Request) -> Services:
    return request.app.state.services


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Send the key as 'Authorization: Bearer <key>'.")
    return token.strip()


def principal(
    request: Request,
    svc: Annotated[Services, Depends(services)],
    authorization: Annotated[str | None, Header()] = None,
    x_modelport_workspace: Annotated[str | None, Header(description="Platform admins: act in this workspace.")] = None,
) -> Iterator[Principal]:
    token = bearer(authorization)
    if token and token.startswith("mpd_"):
        raise Unauthenticated("Deployment keys call inference routes only; use an API key on /api/v1.")
    p = svc.identity.authenticate(token, x_modelport_workspace)
    request.state.principal = p
    # Counted while it runs, so that deleting the workspace waits for it (identity/activity.py).
    with svc.identity.activity.hold(p.workspace_id):
        yield p


Svc = Annotated[Services, Depends(services)]
Caller = Annotated[Principal, Depends(principal)]
