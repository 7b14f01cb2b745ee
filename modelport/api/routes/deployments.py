"""Routes: deployments (control plane). Workers start in the background after a create."""

from __future__ import annotations

from fastapi import APIRouter, status

from modelport.api.deps import Caller, Svc
from modelport.config import Settings
from modelport.db.tables import CatalogModel, Deployment
from modelport.deployments.schemas import (
    DeploymentCreate,
    DeploymentCreated,
    DeploymentKeys,
    DeploymentOut,
    DeploymentUpdate,
    PoolOut,
    RegenerateKey,
    UsageOut,
)
from modelport.offload import run_blocking
from modelport.quotas import rates
from modelport.safety.config import ContentFilterConfig

router = APIRouter(prefix="/api/v1")


def deployment_out(d: Deployment, m: CatalogModel, settings: Settings, pool: dict | None = None) -> dict:
    return {"pool": pool, "id": d.id, "name": d.name, "model": m.name, "model_id": m.id, "model_version": m.version,
            "task": m.task, "type": d.type, "instances": d.instances, "geography": d.geography, "state": d.state,
            "state_reason": d.state_reason,
            "suspensions": [{"reason": r, "message": m} for r, m in (d.suspensions or {}).items()],
            "egress": d.egress, "isolation": d.isolation,
            "network": d.network,
            "content_filter": d.content_filter or {},
            "rate_limits": rates.effective(settings, d.type, d.rate_limit_caps, d.rate_limits).as_dict(),
            "rate_limit_caps": rates.caps_of(settings, d.type, d.rate_limit_caps).as_dict(),
            "endpoints": {"openai": "/v1", "azure": f"/deployments/{d.name}"},
            "created_at": d.created_at, "updated_at": d.updated_at}


@router.post("/deployments", response_model=DeploymentCreated, status_code=status.HTTP_201_CREATED,
             name="deployment.create")
async def create_deployment(body: DeploymentCreate, caller: Caller, svc: Svc) -> dict:
    created = await run_blocking(svc.deployments.create, caller, body)
    svc.manager.refresh(created.row.id)
    svc.manager.spawn(svc.manager.provision(created.row.id))
    return {**deployment_out(created.row, created.model, svc.settings),
            "keys": DeploymentKeys(primary=created.primary, secondary=created.secondary)}


@router.get("/deployments", response_model=list[DeploymentOut], name="deployment.list")
def list_deployments(caller: Caller, svc: Svc) -> list[dict]:
    return [deployment_out(d, m, svc.settings, svc.manager.pool_status(d.id)) for d, m in svc.deployments.list(caller)]


@router.get("/deployments/{name}", response_model=DeploymentOut, name="deployment.read")
def get_deployment(name: str, caller: Caller, svc: Svc) -> dict:
    d, m = svc.deployments.get(caller, name)
    return deployment_out(d, m, svc.settings, svc.manager.pool_status(d.id))


@router.patch("/deployments/{name}", response_model=DeploymentOut, name="deployment.update")
async def update_deployment(name: str, body: DeploymentUpdate, caller: Caller, svc: Svc) -> dict:
    row = await run_blocking(svc.deployments.update, caller, name, body)
    svc.manager.refresh(row.id)
    if body.instances is not None:
        svc.manager.spawn(svc.manager.rescale(row.id))
    d, m = await run_blocking(svc.deployments.get, caller, row.id)
    return deployment_out(d, m, svc.settings, svc.manager.pool_status(d.id))


@router.delete("/deployments/{name}", status_code=status.HTTP_204_NO_CONTENT, name="deployment.delete")
async def delete_deployment(name: str, caller: Caller, svc: Svc) -> None:
    row = await run_blocking(svc.deployments.mark_deleting, caller, name)
    await svc.manager.delete(row.id)


@router.post("/deployments/{name}/keys", response_model=DeploymentKeys, name="deployment.regenerate_key")
async def regenerate_key(name: str, body: RegenerateKey, caller: Caller, svc: Svc) -> DeploymentKeys:
    row, secret = await run_blocking(svc.deployments.regenerate_key, caller, name, body.which)
    svc.manager.refresh(row.id)
    return DeploymentKeys(**{body.which: secret})


@router.get("/deployments/{name}/usage", response_model=UsageOut, name="deployment.usage")
async def deployment_usage(name: str, caller: Caller, svc: Svc) -> dict:
    await run_blocking(svc.manager.flush_usage)
    return await run_blocking(svc.deployments.usage, caller, name)


@router.get("/deployments/{name}/content-filter", name="deployment.content_filter.read")
def get_content_filter(name: str, caller: Caller, svc: Svc) -> dict:
    d, _ = svc.deployments.get(caller, name)
    return ContentFilterConfig.model_validate(d.content_filter or {}).model_dump(mode="json")


@router.put("/deployments/{name}/content-filter", name="deployment.content_filter.update")
async def put_content_filter(name: str, body: ContentFilterConfig, caller: Caller, svc: Svc) -> dict:
    known = await run_blocking(svc.safety.check_filter, caller, body)  # also the blocklists' caps
    row = await run_blocking(svc.deployments.set_content_filter, caller, name, body, known)
    svc.manager.refresh(row.id)
    return ContentFilterConfig.model_validate(row.content_filter).model_dump(mode="json")


@router.get("/deployments/{name}/content-filter/counts", name="deployment.content_filter.counts")
def content_filter_counts(name: str, caller: Caller, svc: Svc) -> list[dict]:
    d, _ = svc.deployments.get(caller, name)
    return svc.safety.counts(d.id)


@router.get("/pools", response_model=list[PoolOut], name="pool.list")
def list_pools(caller: Caller, svc: Svc) -> list[dict]:
    """Every running worker pool, its size and load (platform admins)."""
    return svc.manager.pools_overview(caller)
