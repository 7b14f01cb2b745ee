"""Routes: workspaces, users, members, API keys, who-am-i. Thin: parse, call, shape."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, status

from modelport.api.deps import Caller, Svc
from modelport.db.tables import ApiKey
from modelport.identity.roles import Role
from modelport.identity.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    MemberAdd,
    MemberOut,
    MemberUpdate,
    MeOut,
    UserApiKeyCreate,
    UserCreate,
    UserOut,
    UserUpdate,
    WorkspaceCreate,
    WorkspaceOut,
)

router = APIRouter(prefix="/api/v1")


def _role(value: str) -> Role:
    """A role as the membership table stores it: only Role's values are ever written there (and the
    answer's model checks it again)."""
    return cast(Role, value)


def _key_out(k: ApiKey) -> dict:
    return {"id": k.id, "name": k.name, "user_id": k.user_id, "workspace_id": k.workspace_id,
            "prefix": "mpk_" + k.id.removeprefix("key_"), "created_at": k.created_at,
            "expires_at": k.expires_at, "revoked_at": k.revoked_at, "last_used_at": k.last_used_at,
            "created_by": k.created_by, "platform_admin": k.platform_admin}


def _user_out(u) -> UserOut:
    return UserOut(id=u.id, name=u.name, email=u.email, platform_admin=u.is_platform_admin,
                   disabled=u.disabled, created_at=u.created_at)


@router.get("/me", response_model=MeOut, name="me.read")
def me(caller: Caller) -> MeOut:
    return MeOut(user_id=caller.user_id, user=caller.user_name, platform_admin=caller.is_platform_admin,
                 workspace_id=caller.workspace_id, workspace=caller.workspace_name, role=caller.role,
                 key_id=caller.key_id)


@router.post("/workspaces", response_model=WorkspaceOut, status_code=status.HTTP_201_CREATED,
             name="workspace.create")
def create_workspace(body: WorkspaceCreate, caller: Caller, svc: Svc) -> WorkspaceOut:
    ws = svc.identity.create_workspace(caller, body.name, body.description, body.owner)
    return WorkspaceOut(id=ws.id, name=ws.name, description=ws.description, role=None, created_at=ws.created_at)


@router.get("/workspaces", response_model=list[WorkspaceOut], name="workspace.list")
def list_workspaces(caller: Caller, svc: Svc) -> list[WorkspaceOut]:
    return [WorkspaceOut(id=w.id, name=w.name, description=w.description,
                         role=_role(role) if role is not None else None, created_at=w.created_at)
            for w, role in svc.identity.list_workspaces(caller)]


@router.get("/workspaces/{ref}", response_model=WorkspaceOut, name="workspace.read")
def get_workspace(ref: str, caller: Caller, svc: Svc) -> WorkspaceOut:
    w = svc.identity.get_workspace(caller, ref)
    return WorkspaceOut(id=w.id, name=w.name, description=w.description, created_at=w.created_at)


@router.delete("/workspaces/{ref}", status_code=status.HTTP_204_NO_CONTENT, name="workspace.delete")
async def delete_workspace(ref: str, caller: Caller, svc: Svc) -> None:
    """Stop and delete everything of the workspace, destroy its workspace key, keep its usage and
    audit records. Answers once its keys are refused, its workers stopped and its data destroyed."""
    await svc.offboarding.delete_workspace(caller, ref)


@router.post("/workspaces/{ref}/members", response_model=MemberOut, status_code=status.HTTP_201_CREATED,
             name="workspace.member.add_any")
def add_member_any(ref: str, body: MemberAdd, caller: Caller, svc: Svc) -> MemberOut:
    """Platform admins add a member to any workspace (adding themselves is audited)."""
    m = svc.identity.add_member(caller, body.user, body.role, workspace=ref)
    return MemberOut(user_id=m.user_id, user=m.user.name, role=_role(m.role), created_at=m.created_at)


@router.get("/members", response_model=list[MemberOut], name="member.list")
def list_members(caller: Caller, svc: Svc) -> list[MemberOut]:
    return [MemberOut(user_id=m.user_id, user=m.user.name, role=_role(m.role), created_at=m.created_at)
            for m in svc.identity.list_members(caller)]


@router.post("/members", response_model=MemberOut, status_code=status.HTTP_201_CREATED, name="member.add")
def add_member(body: MemberAdd, caller: Caller, svc: Svc) -> MemberOut:
    m = svc.identity.add_member(caller, body.user, body.role)
    return MemberOut(user_id=m.user_id, user=m.user.name, role=_role(m.role), created_at=m.created_at)


@router.patch("/members/{user}", response_model=MemberOut, name="member.update")
def update_member(user: str, body: MemberUpdate, caller: Caller, svc: Svc) -> MemberOut:
    m = svc.identity.set_member_role(caller, user, body.role)
    return MemberOut(user_id=m.user_id, user=m.user.name, role=_role(m.role), created_at=m.created_at)


@router.delete("/members/{user}", status_code=status.HTTP_204_NO_CONTENT, name="member.remove")
def remove_member(user: str, caller: Caller, svc: Svc) -> None:
    svc.identity.remove_member(caller, user)


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED, name="user.create")
def create_user(body: UserCreate, caller: Caller, svc: Svc) -> UserOut:
    return _user_out(svc.identity.create_user(caller, body.name, body.email, body.platform_admin))


@router.get("/users", response_model=list[UserOut], name="user.list")
def list_users(caller: Caller, svc: Svc) -> list[UserOut]:
    return [_user_out(u) for u in svc.identity.list_users(caller)]


@router.patch("/users/{ref}", response_model=UserOut, name="user.update")
def update_user(ref: str, body: UserUpdate, caller: Caller, svc: Svc) -> UserOut:
    return _user_out(svc.identity.set_user_disabled(caller, ref, body.disabled))


@router.post("/users/{ref}/apikeys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED,
             name="user.apikey.create")
def create_api_key_for_user(ref: str, body: UserApiKeyCreate, caller: Caller, svc: Svc) -> ApiKeyCreated:
    """Platform admins create a key for a non-admin member of a workspace, without joining it (audited there)."""
    created = svc.identity.create_api_key_for_user(caller, ref, body.workspace, body.name, body.expires_in_days)
    return ApiKeyCreated(**_key_out(created.row), key=created.secret)


@router.post("/apikeys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED, name="apikey.create")
def create_api_key(body: ApiKeyCreate, caller: Caller, svc: Svc) -> ApiKeyCreated:
    created = svc.identity.create_api_key(caller, body.name, body.expires_in_days, body.user)
    return ApiKeyCreated(**_key_out(created.row), key=created.secret)


@router.get("/apikeys", response_model=list[ApiKeyOut], name="apikey.list")
def list_api_keys(caller: Caller, svc: Svc) -> list[ApiKeyOut]:
    return [ApiKeyOut(**_key_out(k)) for k in svc.identity.list_api_keys(caller)]


@router.delete("/apikeys/{key_id}", response_model=ApiKeyOut, name="apikey.revoke")
def revoke_api_key(key_id: str, caller: Caller, svc: Svc) -> ApiKeyOut:
    return ApiKeyOut(**_key_out(svc.identity.revoke_api_key(caller, key_id)))
