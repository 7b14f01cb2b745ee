"""Wire schemas of the deployment routes (control plane)."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelport.identity.schemas import NAME_PATTERN, NAME_RULE
from modelport.quotas.rates import RateLimitsIn

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: An IPv4 address or range as the validator below takes it (the document also names IPv6 addresses).
IPV4_RANGE_PATTERN = rf"^{_OCTET}(\.{_OCTET}){{3}}(/(3[0-2]|[12]?[0-9]))?$"


class NetworkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_access: bool = Field(default=True, strict=True,
                                description="Any caller holding a key; off: only allowed ranges.")
    allowed_ranges: list[str] = Field(default_factory=list, max_length=100,
                                      description="Client address ranges (CIDR) allowed when public access is off.",
                                      json_schema_extra={"items": {"anyOf": [
                                          {"type": "string", "pattern": IPV4_RANGE_PATTERN},
                                          {"type": "string", "format": "ipv6"}]}})

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
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN, description=NAME_RULE)
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
    rate_limits: RateLimitsIn | None = Field(default=None, description="Owners: lower the deployment's requests "
                                             "and tokens per minute, at most its caps (null field: the cap).")
    rate_limit_caps: RateLimitsIn | None = Field(default=None, description="Platform admins: the most the owner "
                                                 "may set (null field: the platform default).")


class RateLimitsOut(BaseModel):
    requests_per_minute: int
    tokens_per_minute: int


class RegenerateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    which: Literal["primary", "secondary"]


class Suspension(BaseModel):
    reason: Literal["key_disabled", "subscription", "policy"]
    message: str


class PoolSize(BaseModel):
    """How many workers serve a deployment now. A serverless pool grows and shrinks between
    `min_instances` and `max_instances` with the load; a dedicated one runs exactly its instances."""

    instances: int = Field(description="Workers running or starting (not retiring).")
    ready: int = Field(description="Workers taking requests now.")
    min_instances: int
    max_instances: int


class PoolOut(PoolSize):
    """A pool as platform admins see it (counts only, nothing of a request)."""

    key: str = Field(description="dedicated:<deployment id>, or serverless:<model id>:<geography>[:<workspace id>].")
    kind: Literal["dedicated", "serverless"]
    geography: str
    deployments: int = Field(description="Deployments the pool serves.")
    retiring: int = Field(description="Workers finishing their last requests before they stop.")
    slots: int = Field(description="Requests the ready workers take at once.")
    in_flight: int
    waiting: int = Field(description="Requests in the fair queue.")
    workspaces: int = Field(description="Workspaces with requests running.")


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
    pool: PoolSize | None = Field(default=None, description="Its workers now; null while none runs (before the "
                                  "first start, or a serverless pool stopped while idle: the next call starts it).")
    network: NetworkSettings
    content_filter: dict
    rate_limits: RateLimitsOut = Field(description="What the gateway enforces: the owner's limits, at most the caps.")
    rate_limit_caps: RateLimitsOut = Field(description="The most the owner may set (a platform admin sets them).")
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
