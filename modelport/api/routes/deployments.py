"""Routes: deployments. Every change goes through the lifecycle service (deployments/lifecycle.py),
which changes the row and then the gateway; workers start in the background after a create."""

from __future__ import annotations

from fastapi import APIRouter, status

from modelport.api.deps import Caller, Svc
from modelport.config import Settings
from modelport.db.tables import CatalogModel, Deployment
from modelport.deployments.lifecycle import DeploymentView
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


def view_out(v: DeploymentView, settings: Settings) -> dict:
    return deployment_out(v.row, v.model, settings, v.pool)


@router.post("/deployments", response_model=DeploymentCreated, status_code=status.HTTP_201_CREATED,
             name="deployment.create")
async def create_deployment(body: DeploymentCreate, caller: Caller, svc: Svc) -> dict:
    created, view = await svc.lifecycle.create(caller, body)
    keys = DeploymentKeys(primary=created.primary, secondary=created.secondary)
    return {**view_out(view, svc.settings), "keys": keys}


@router.get("/deployments", response_model=list[DeploymentOut], name="deployment.list")
async def list_deployments(caller: Caller, svc: Svc) -> list[dict]:
    return [view_out(v, svc.settings) for v in await svc.lifecycle.list(caller)]


@router.get("/deployments/{name}", response_model=DeploymentOut, name="deployment.read")
async def get_deployment(name: str, caller: Caller, svc: Svc) -> dict:
    return view_out(await svc.lifecycle.get(caller, name), svc.settings)


@router.patch("/deployments/{name}", response_model=DeploymentOut, name="deployment.update")
async def update_deployment(name: str, body: DeploymentUpdate, caller: Caller, svc: Svc) -> dict:
    return view_out(await svc.lifecycle.update(caller, name, body), svc.settings)


@router.delete("/deployments/{name}", status_code=status.HTTP_204_NO_CONTENT, name="deployment.delete")
async def delete_deployment(name: str, caller: Caller, svc: Svc) -> None:
    await svc.lifecycle.delete(caller, name)


@router.post("/deployments/{name}/keys", response_model=DeploymentKeys, name="deployment.regenerate_key")
async def regenerate_key(name: str, body: RegenerateKey, caller: Caller, svc: Svc) -> DeploymentKeys:
    _, secret = await svc.lifecycle.regenerate_key(caller, name, body.which)
    return DeploymentKeys(**{body.which: secret})


@router.get("/deployments/{name}/usage", response_model=UsageOut, name="deployment.usage")
async def deployment_usage(name: str, caller: Caller, svc: Svc) -> dict:
    return await svc.lifecycle.usage(caller, name)


@router.get("/deployments/{name}/content-filter", name="deployment.content_filter.read")
async def get_content_filter(name: str, caller: Caller, svc: Svc) -> dict:
    return (await svc.lifecycle.content_filter(caller, name)).model_dump(mode="json")


@router.put("/deployments/{name}/content-filter", name="deployment.content_filter.update")
async def put_content_filter(name: str, body: ContentFilterConfig, caller: Caller, svc: Svc) -> dict:
    return (await svc.lifecycle.set_content_filter(caller, name, body)).model_dump(mode="json")


@router.get("/deployments/{name}/content-filter/counts", name="deployment.content_filter.counts")
def content_filter_counts(name: str, caller: Caller, svc: Svc) -> list[dict]:
    d, _ = svc.deployments.get(caller, name)
    return svc.safety.counts(d.id)


@router.get("/pools", response_model=list[PoolOut], name="pool.list")
def list_pools(caller: Caller, svc: Svc) -> list[dict]:
    """Every running worker pool, its size and load (platform admins)."""
    return svc.gateway.provisioner.pools_overview(caller)
