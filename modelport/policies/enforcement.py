"""`policies compliance --enforce`: suspend the deployments that the policies in force deny, and
resume those that governance suspended and that comply again.

Suspension uses the deployment state `suspended` with a state reason of its own (it starts with
`policy:` and names policy ids only), beside the suspension of a fine-tune whose workspace key is
disabled: each is lifted only by what set it. A suspended deployment answers 503 with the reason.
A dedicated deployment's workers stop; a serverless deployment's shared pool keeps serving the
other deployments of its model, and this one is refused at the gateway.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from modelport.db.tables import CatalogModel, Deployment
from modelport.identity.principal import Principal
from modelport.inference.manager import POLICY_SUSPENSION, DeploymentManager, pool_key
from modelport.policies.service import PolicyService, Violation


def reason(violation: Violation) -> str:
    ids = ", ".join(violation.decision.denied_by)
    return (f"{POLICY_SUSPENSION} suspended by governance policy {ids}; change the deployment or the policy, then "
            "run 'modelport policies compliance --enforce' to resume it.")


async def enforce(service: PolicyService, manager: DeploymentManager, actor: Principal,
                  all_workspaces: bool) -> tuple[int, list[Violation], list[str], list[str]]:
    version, found, comply = await asyncio.to_thread(service.suspensions, actor, all_workspaces)
    suspended: list[str] = []
    for v in found:
        if v.kind != "deployment" or not v.decision.denied_by or v.state in ("suspended", "deleting"):
            continue
        with service.db.session() as s:
            dep = s.get(Deployment, v.id)
            model = s.get(CatalogModel, dep.model_id) if dep else None
        if dep is None or model is None:
            continue
        await asyncio.to_thread(manager.service.set_state, dep.id, "suspended", reason(v))
        manager.refresh(dep.id)  # the gateway refuses it from now on
        if dep.type == "dedicated":
            await manager.pools.close(pool_key(dep, model))
        suspended.append(dep.id)
    resumed: list[str] = []
    for dep_id in comply:
        with service.db.session() as s:
            state = s.scalar(select(Deployment.state).where(Deployment.id == dep_id))
        if state != "suspended":
            continue
        await asyncio.to_thread(manager.service.set_state, dep_id, "creating", None)
        manager.refresh(dep_id)
        manager.spawn(manager.provision(dep_id))
        resumed.append(dep_id)
    await asyncio.to_thread(service.record_enforcement, actor, suspended, resumed, all_workspaces)
    return version, found, suspended, resumed
