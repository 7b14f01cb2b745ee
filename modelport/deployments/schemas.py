"""Wire schemas of the deployment routes (control plane)."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class NetworkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_access: bool = Field(default=True, description="Any caller holding a key; off: only allowed ranges.")
    allowed_ranges: list[str] = Field(default_factory=list, max_length=100,
                                      description="Client address ranges (CIDR) allowed when public access is off.")

    @field_validator("allowed_ranges")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        out = []
        for i, r in enumerate(value):
            try:
                out.append(str(ipaddress.ip_network(r, strict=False)))
            except ValueError as exc:
                raise ValueError(f"allowed_ranges[{i}] is not an IP address range such as 10.0.0.0/8") from exc
        return out


class Isolation(BaseModel):
    """What a model process's sandbox isolates: all true, except `network` where the operator
    allowed egress, and all false only where unisolated processes are allowed on a development
    machine (MODELPORT_ALLOW_UNISOLATED_WORKERS)."""

    network: bool = Field(description="Its own network namespace: no connection out.")
    files: bool = Field(description="A root holding nothing of the platform (and, as root, a uid of its own).")
    processes: bool = Field(description="Its own PID namespace: no other process is visible; all die with it.")


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    model: str = Field(min_length=1, max_length=100, description="Catalog model name.")
    model_version: str | None = Field(default=None, max_length=64)
    type: Literal["dedicated", "serverless"] = "serverless"
    instances: int = Field(default=1, ge=1, le=16, description="Dedicated: worker instances reserved.")
    geography: str | None = Field(default=None, max_length=32, description="Default: the installation's first.")
    network: NetworkSettings = Field(default_factory=NetworkSettings)


class DeploymentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: int | None = Field(default=None, ge=1, le=16)
    network: NetworkSettings | None = None


class RegenerateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    which: Literal["primary", "secondary"]


class Suspension(BaseModel):
    reason: Literal["key_disabled", "subscription", "policy"]
    message: str


class DeploymentOut(BaseModel):
    id: str
    name: str
    model: str
    model_id: str
    model_version: str
    task: str
    type: str
    instances: int
    geography: str
    state: str
    state_reason: str | None
    suspensions: list[Suspension] = Field(
        default_factory=list, description="Why it is suspended (state `suspended`): each reason with its message.")
    egress: str = Field(description="`isolated` when every worker has no network route out (isolation.network).")
    isolation: Isolation | None = Field(description="How its workers are isolated; null before one started.")
    network: NetworkSettings
    content_filter: dict
    endpoints: dict[str, str]
    created_at: datetime
    updated_at: datetime


class DeploymentKeys(BaseModel):
    primary: str | None = None
    secondary: str | None = None


class DeploymentCreated(DeploymentOut):
    keys: DeploymentKeys = Field(description="Shown once; store them now.")


class UsageOut(BaseModel):
    deployment: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
