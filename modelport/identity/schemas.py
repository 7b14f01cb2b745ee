"""Wire schemas of workspaces, users, members and API keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from modelport.identity.roles import Role

#: Names of workspaces, users, deployments and datasets: in the document, so that a client knows the
#: rule before it sends (identity.service.check_name applies the same pattern).
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
NAME_RULE = "1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit."


class WorkspaceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN, description=NAME_RULE)
    description: str = Field(default="", max_length=500)
    owner: str | None = Field(default=None, max_length=63, description="User name or id; default: you.")


class WorkspaceOut(BaseModel):
    id: str
    name: str
    description: str
    role: Role | None = None
    created_at: datetime


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN, description=NAME_RULE)
    email: str | None = Field(default=None, max_length=254)
    platform_admin: bool = Field(default=False, strict=True)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disabled: bool = Field(strict=True)


class UserOut(BaseModel):
    id: str
    name: str
    email: str | None
    platform_admin: bool
    disabled: bool
    created_at: datetime


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=63, description="User name or id.")
    role: Role


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class MemberOut(BaseModel):
    user_id: str
    user: str
    role: Role
    created_at: datetime


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=64)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    user: str | None = Field(default=None, max_length=63,
                             description="Your own name or id, if given: an API key is created by its own user "
                                         "(a platform admin uses POST /api/v1/users/{user}/apikeys).")


class UserApiKeyCreate(BaseModel):
    """A platform admin creates a key for a non-admin member of a workspace, without joining it."""

    model_config = ConfigDict(extra="forbid")
    workspace: str = Field(min_length=1, max_length=63, description="Workspace name or id; the user is a member.")
    name: str = Field(default="", max_length=64)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    user_id: str
    workspace_id: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_by: str | None = Field(description="Id of the user who created the key.")
    platform_admin: bool = Field(description="The key carries platform-admin power.")


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret. Shown once; store it now.")


class MeOut(BaseModel):
    user_id: str
    user: str
    platform_admin: bool
    workspace_id: str
    workspace: str
    role: Role | None
    key_id: str
