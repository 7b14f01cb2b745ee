"""Routes: datasets (streamed, validated, encrypted uploads) and key management."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Literal

import anyio
import anyio.from_thread
from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from modelport.api.deps import Caller, Services, Svc
from modelport.db.tables import Dataset
from modelport.identity.principal import Principal
from modelport.identity.schemas import NAME_PATTERN, NAME_RULE
from modelport.offload import run_blocking
from modelport.schema_types import JsonInt

router = APIRouter(prefix="/api/v1")


class DatasetOut(BaseModel):
    id: str
    name: str
    format: str
    size: int
    sha256: str
    rows: int
    created_at: datetime


def _out(d: Dataset) -> DatasetOut:
    return DatasetOut(id=d.id, name=d.name, format=d.format, size=d.size, sha256=d.sha256, rows=d.rows,
                      created_at=d.created_at)


@router.post("/datasets", response_model=DatasetOut, status_code=status.HTTP_201_CREATED, name="dataset.create",
             openapi_extra={"requestBody": {"content": {"application/jsonl": {}, "application/octet-stream": {}},
                                            "required": True}})
async def upload_dataset(request: Request, caller: Caller, svc: Svc,
                         name: Annotated[str, Query(min_length=1, max_length=63, pattern=NAME_PATTERN,
                                                     description=NAME_RULE)],
                         format: Annotated[Literal["chat", "prompt_completion"] | None, Query()] = None) -> DatasetOut:
    """Stream a JSONL file as the body. It is validated and encrypted as it arrives."""
    return _out(await receive_dataset(request, svc, caller, name, format))


async def receive_dataset(request: Request, svc: Services, actor: Principal, name: str, fmt: str | None) -> Dataset:
    """The request body, streamed into the datastore as a dataset (checked before the first byte
    is read, validated and encrypted as it arrives, never written in plaintext): the REST route's
    and the portal's upload."""
    length = request.headers.get("content-length")
    await run_blocking(svc.datasets.check_upload, actor, name, fmt,
                                   int(length) if length and length.isdigit() else None)
    stream = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:
        while (chunk := anyio.from_thread.run(next_chunk)) is not None:
            if chunk:
                yield chunk

    return await run_blocking(svc.datasets.upload, actor, name, fmt, chunks())


@router.get("/datasets", response_model=list[DatasetOut], name="dataset.list")
def list_datasets(caller: Caller, svc: Svc) -> list[DatasetOut]:
    return [_out(d) for d in svc.datasets.list(caller)]


@router.get("/datasets/{ref}", response_model=DatasetOut, name="dataset.read")
def get_dataset(ref: str, caller: Caller, svc: Svc) -> DatasetOut:
    return _out(svc.datasets.get(caller, ref))


@router.delete("/datasets/{ref}", status_code=status.HTTP_204_NO_CONTENT, name="dataset.delete")
def delete_dataset(ref: str, caller: Caller, svc: Svc) -> None:
    svc.datasets.delete(caller, ref)


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
