"""Routes: governance policies (list, show, save, delete, test) and compliance of what exists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import PlainTextResponse

from modelport.api.deps import Caller, Svc
from modelport.db.tables import Policy
from modelport.policies import compiler, enforcement
from modelport.policies.schemas import ComplianceOut, PolicyOut, PolicyPut, PolicyTest, TestOut
from modelport.policies.service import Violation

router = APIRouter(prefix="/api/v1/policies")

PolicyId = Annotated[str, Path(pattern=compiler.POLICY_ID_RE.pattern, max_length=64)]
AllWorkspaces = Annotated[bool, Query(description="Platform admins: every workspace and the catalog-wide models.")]


def policy_out(row: Policy, workspace: str | None) -> dict:
    actions = compiler.actions_of(row.cedar)
    return {"id": row.policy_id, "scope": "workspace" if row.workspace_id else "platform", "workspace": workspace,
            "effect": "audit" if row.audit else "deny",
            "actions": [a for a in compiler.ACTIONS if a in actions], "cedar": row.cedar,
            "created_at": row.created_at, "updated_at": row.updated_at, "updated_by": row.updated_by}


def compliance_out(version: int, found: list[Violation], suspended: Sequence[str] = (),
                   resumed: Sequence[str] = ()) -> dict:
    return {"policy_version": version, "suspended": list(suspended), "resumed": list(resumed),
            "items": [{"kind": v.kind, "id": v.id, "name": v.name, "workspace": v.workspace, "action": v.action,
                       "state": v.state, "denied_by": list(v.decision.denied_by),
                       "audited_by": list(v.decision.audited_by)} for v in found]}


@router.get("", response_model=list[PolicyOut], name="policy.list")
def list_policies(caller: Caller, svc: Svc) -> list[dict]:
    """The policies in force in this workspace: the platform's and the workspace's own."""
    return [policy_out(r, ws) for r, ws in svc.policies.list(caller)]


@router.get("/schema", response_class=PlainTextResponse, name="policy.schema",
            responses={200: {"content": {"text/plain": {}}}})
def get_schema(caller: Caller) -> str:
    """The Cedar schema policies are validated against: entities, attributes, actions."""
    return compiler.schema_text()


@router.get("/compliance", response_model=ComplianceOut, name="policy.compliance")
def compliance(caller: Caller, svc: Svc, all_workspaces: AllWorkspaces = False) -> dict:
    """Deployments and models that the policies in force would deny or audit now. Changes nothing."""
    return compliance_out(*svc.policies.compliance(caller, all_workspaces))


@router.post("/compliance/enforce", response_model=ComplianceOut, name="policy.compliance.enforce")
async def enforce_compliance(caller: Caller, svc: Svc, all_workspaces: AllWorkspaces = False) -> dict:
    """Suspend the deployments the policies deny (503 with the reason) and resume those that a
    policy suspended and that comply again. Audited."""
    version, found, suspended, resumed = await enforcement.enforce(svc.policies, svc.lifecycle, caller, all_workspaces)
    return compliance_out(version, found, suspended, resumed)


@router.post("/test", response_model=TestOut, name="policy.test")
def test_policy(body: PolicyTest, caller: Caller, svc: Svc) -> dict:
    """Decide a described request without performing it: allow or deny, with the policy ids."""
    decision, facts = svc.policies.test(caller, body)
    return {"decision": "allow" if decision.allowed else "deny", "denied_by": list(decision.denied_by),
            "audited_by": list(decision.audited_by), "facts": facts}


@router.get("/{policy_id}", response_model=PolicyOut, name="policy.read")
def get_policy(policy_id: PolicyId, caller: Caller, svc: Svc) -> dict:
    return policy_out(*svc.policies.get(caller, policy_id))


@router.put("/{policy_id}", response_model=PolicyOut, name="policy.put",
            responses={201: {"model": PolicyOut, "description": "Created"}})
def put_policy(policy_id: PolicyId, body: PolicyPut, caller: Caller, svc: Svc, response: Response) -> dict:
    """Save a policy (create or replace). It is in force for the next request."""
    row, created = svc.policies.put(caller, policy_id, body)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return policy_out(row, caller.workspace_name if row.workspace_id else None)


@router.delete("/{policy_id}", status_code=status.HTTP_204_NO_CONTENT, name="policy.delete")
def delete_policy(policy_id: PolicyId, caller: Caller, svc: Svc,
                  scope: Literal["platform", "workspace"] = "workspace") -> None:
    svc.policies.delete(caller, policy_id, scope)
