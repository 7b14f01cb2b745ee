"""`policies compliance --enforce`: suspend the deployments that the policies in force deny, and
resume those that a policy suspended and that comply again.

The suspension is the deployment's `policy` reason (deployments/suspension.py), beside any other
(key_disabled, subscription): each is cleared only by its own cause, so resuming here never lifts
a disabled key's suspension. A suspended deployment answers 503 with the message, which names
policy ids only. The lifecycle service stops its workers unless another deployment shares them.
"""

from __future__ import annotations

from modelport.deployments.lifecycle import DeploymentLifecycle
from modelport.identity.principal import Principal
from modelport.offload import run_blocking
from modelport.policies.service import SUSPENSION_REASON, PolicyService, Violation


def message(violation: Violation) -> str:
    ids = ", ".join(violation.decision.denied_by)
    return (f"Governance policy {ids} forbids this deployment as it is; change the deployment or the policy, then "
            "run 'modelport policies compliance --enforce' to resume it.")


async def enforce(service: PolicyService, lifecycle: DeploymentLifecycle, actor: Principal,
                  all_workspaces: bool) -> tuple[int, list[Violation], list[str], list[str]]:
    version, found, to_suspend, to_resume = await run_blocking(service.suspensions, actor, all_workspaces)
    by_id = {v.id: v for v in found if v.kind == "deployment"}
    for dep_id in to_suspend:
        await lifecycle.suspend(dep_id, SUSPENSION_REASON, message(by_id[dep_id]))
    for dep_id in to_resume:
        await lifecycle.resume(dep_id, SUSPENSION_REASON)
    await run_blocking(service.record_enforcement, actor, to_suspend, to_resume, all_workspaces)
    return version, found, to_suspend, to_resume
