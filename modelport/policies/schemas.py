"""Wire schemas of the policy routes (control plane)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from modelport.deployments.schemas import NetworkSettings
from modelport.policies.compiler import ACTIONS, MAX_TEXT_BYTES
from modelport.safety.config import ContentFilterConfig

Action = Literal["deploy", "update_deployment", "change_content_filter", "import_model", "download_model",
                 "create_finetune", "subscribe"]
assert set(get_args(Action)) == set(ACTIONS)


class PolicyPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cedar: str = Field(min_length=1, max_length=MAX_TEXT_BYTES,
                       description="One Cedar `forbid` policy; `@audit` makes it record and allow.")
    scope: Literal["platform", "workspace"] = Field(
        default="workspace", description="platform: everywhere (platform admins); workspace: this workspace (owners).")


class PolicyOut(BaseModel):
    id: str
    scope: Literal["platform", "workspace"]
    workspace: str | None = Field(description="The workspace of a workspace policy.")
    effect: Literal["deny", "audit"]
    actions: list[str] = Field(description="The actions its action scope can match.")
    cedar: str
    created_at: datetime
    updated_at: datetime
    updated_by: str | None


class PolicyTest(BaseModel):
    """A request to decide without performing it. Deployment fields start from `deployment` (an
    existing one) or from a new deployment's defaults; model actions need only `model`."""

    model_config = ConfigDict(extra="forbid")
    action: Action
    model: str | None = Field(default=None, max_length=100, description="Catalog model name.")
    model_version: str | None = Field(default=None, max_length=64)
    as_user: str | None = Field(default=None, max_length=64,
                                description="Decide for this member of the workspace (owners, platform admins).")
    deployment: str | None = Field(default=None, max_length=64, description="An existing deployment to start from.")
    type: Literal["dedicated", "serverless"] | None = None
    geography: str | None = Field(default=None, max_length=32)
    instances: int | None = Field(default=None, ge=1, le=16)
    network: NetworkSettings | None = None
    content_filter: ContentFilterConfig | None = None


class TestOut(BaseModel):
    decision: Literal["allow", "deny"]
    denied_by: list[str]
    audited_by: list[str]
    facts: dict = Field(description="The principal and resource as the policies saw them.")


class ComplianceItem(BaseModel):
    kind: Literal["deployment", "model"]
    id: str
    name: str
    workspace: str | None
    action: str = Field(description="The action the item was checked as: deploy for deployments, import_model "
                                    "for models.")
    state: str | None = Field(default=None, description="Deployments: their state.")
    denied_by: list[str]
    audited_by: list[str]


class ComplianceOut(BaseModel):
    policy_version: int
    items: list[ComplianceItem]
    suspended: list[str] = Field(default_factory=list, description="--enforce: deployments suspended now.")
    resumed: list[str] = Field(default_factory=list,
                               description="--enforce: policy-suspended deployments that comply again.")
