"""Encryption keys: the workspace's key, its customer-managed key (CMK) and the platform key.

Every route is one call to `EncryptionKeyService` (modelport/encryption_keys/service.py), which checks the
caller's role and audits the change.
"""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from modelport.api.deps import Caller, Svc
from modelport.schema_types import JsonInt

router = APIRouter(prefix="/api/v1")


class MinVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: JsonInt = Field(ge=1)
    force: bool = Field(default=False, strict=True,
                        description="Retire versions still used by stored objects (they become unreadable).")


class CmkRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str | None = Field(default=None, max_length=32,
                                 description="Key provider: `aws`, or `local` (default: a new local key).")
    key_ref: str | None = Field(default=None, max_length=2048, description="The key's id or ARN at the provider.")


@router.get("/workspace-key", name="workspace_key.read")
def workspace_key(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.workspace_key(caller)


@router.post("/workspace-key/rotate", name="workspace_key.rotate")
def rotate_workspace_key(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.rotate_workspace_key(caller)


@router.post("/workspace-key/rewrap", name="workspace_key.rewrap")
def rewrap_workspace(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.rewrap_workspace(caller)


@router.post("/workspace-key/min-decryption-version", name="workspace_key.min_decryption_version")
def workspace_min_version(body: MinVersion, caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.set_workspace_min_version(caller, body.version, body.force)


@router.post("/cmk", name="cmk.register", status_code=status.HTTP_201_CREATED)
def register_cmk(body: CmkRegister, caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.register_cmk(caller, body.provider, body.key_ref)


@router.delete("/cmk", name="cmk.unregister")
def unregister_cmk(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.unregister_cmk(caller)


@router.post("/cmk/disable", name="cmk.disable")
def disable_cmk(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.set_workspace_key_enabled(caller, False)


@router.post("/cmk/enable", name="cmk.enable")
def enable_cmk(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.set_workspace_key_enabled(caller, True)


@router.post("/cmk/rotate", name="cmk.rotate")
def rotate_cmk(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.rotate_workspace_key(caller)


@router.get("/platform-key", name="platform_key.read")
def platform_key(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.platform_key(caller)


@router.post("/platform-key/rotate", name="platform_key.rotate")
def rotate_platform_key(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.rotate_platform_key(caller)


@router.post("/platform-key/rewrap", name="platform_key.rewrap")
def rewrap_platform(caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.rewrap_platform(caller)


@router.post("/platform-key/min-decryption-version", name="platform_key.min_decryption_version")
def platform_min_version(body: MinVersion, caller: Caller, svc: Svc) -> dict:
    return svc.encryption_keys.set_platform_min_version(caller, body.version, body.force)
