"""Routes: datasets (streamed, validated, encrypted uploads)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Literal

import anyio
import anyio.from_thread
from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel

from modelport.api.deps import Caller, Services, Svc
from modelport.db.tables import Dataset
from modelport.identity.principal import Principal
from modelport.identity.schemas import NAME_PATTERN, NAME_RULE
from modelport.offload import run_blocking

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
