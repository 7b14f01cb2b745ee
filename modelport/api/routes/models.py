"""Routes: the catalog (list, show, update, delete, rescan, download) and model imports."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status

from modelport.api.deps import Caller, Services, Svc
from modelport.api.responses import VerifiedDownload
from modelport.catalog.downloads import VerifiedRead
from modelport.catalog.schemas import (
    ModelDetailOut,
    ModelOut,
    ModelPage,
    ModelUpdate,
    UploadCreate,
    UploadFile,
    UploadOut,
)
from modelport.catalog.service import Filters
from modelport.db.tables import CatalogModel

router = APIRouter(prefix="/api/v1")


def model_out(m: CatalogModel, detail: bool = False, offer: dict | None = None) -> dict:
    out = {
        "id": m.id, "name": m.name, "version": m.version, "publisher": m.publisher,
        "license": {"spdx": m.license_spdx, "url": m.license_url}, "task": m.task, "format": m.format,
        "size_bytes": m.size_bytes, "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in m.files],
        "scan": {"status": m.scan_status, "scanned_at": m.scanned_at,
                 "findings": (m.scan_report or {}).get("findings", [])},
        "curated": m.curated, "downloadable": m.downloadable, "finetunable": m.finetunable,
        "deployment_types": m.deployment_types, "owner": "platform" if not m.owner_workspace_id else "workspace",
        "source": m.source, "deprecated": m.deprecated, "metadata": m.model_metadata or {}, "offer": offer,
        "created_at": m.created_at,
    }
    if detail:
        out["card"] = m.card
        out["scan_report"] = m.scan_report or {}
    return out


def upload_out(meta: dict) -> UploadOut:
    return UploadOut(id=meta["id"], name=meta["request"]["name"], version=meta["request"]["version"],
                     files=[UploadFile(path=p, size=s) for p, s in meta["files"].items()],
                     received=sorted(meta["received"]), expires_at=meta["expires_at"])


@router.get("/models", response_model=ModelPage, name="model.list")
def list_models(
    caller: Caller, svc: Svc,
    task: str | None = None, publisher: str | None = None, license: str | None = None,
    format: str | None = None, curated: bool | None = None,
    owner: Annotated[Literal["platform", "workspace"] | None, Query(description="platform | workspace")] = None,
    include_deprecated: bool = True, q: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: str | None = None,
) -> dict:
    rows, nxt = svc.catalog.list(caller, Filters(task=task, publisher=publisher, license=license, format=format,
                                                 curated=curated, owner=owner,
                                                 include_deprecated=include_deprecated, q=q),
                                 limit=limit, cursor=cursor)
    offers = svc.offers.summaries([m.id for m in rows])
    return {"data": [model_out(m, offer=offers.get(m.id)) for m in rows], "next_cursor": nxt}


@router.get("/models/{name}", response_model=ModelDetailOut, name="model.read")
def get_model(name: str, caller: Caller, svc: Svc, version: str | None = None) -> dict:
    m = svc.catalog.get(caller, name, version)
    return model_out(m, detail=True, offer=svc.offers.summaries([m.id]).get(m.id))


@router.patch("/models/{name}", response_model=ModelOut, name="model.update")
def update_model(name: str, body: ModelUpdate, caller: Caller, svc: Svc, version: str | None = None) -> dict:
    return model_out(svc.catalog.update(caller, name, version, body))


@router.post("/models/{name}/deprecate", response_model=ModelOut, name="model.deprecate")
def deprecate_model(name: str, caller: Caller, svc: Svc, version: str | None = None) -> dict:
    return model_out(svc.catalog.update(caller, name, version, ModelUpdate(deprecated=True)))


async def _scan_slot(svc: Services, fn: Any, *args: Any) -> Any:
    """Run a call that scans a model in a thread, at most `scan_concurrency` at once: a scan (hashing,
    the template check's child process) can take long, and must not hold the threads that
    serve every other control-plane request while it does (callers wait without a thread)."""
    return await svc.scan_budget.run(fn, *args)


@router.post("/models/{name}/scan", response_model=ModelDetailOut, name="model.scan")
async def rescan_model(name: str, caller: Caller, svc: Svc, version: str | None = None) -> dict:
    return model_out(await _scan_slot(svc, svc.catalog.rescan, caller, name, version), detail=True)


@router.delete("/models/{name}", status_code=status.HTTP_204_NO_CONTENT, name="model.delete")
def delete_model(name: str, caller: Caller, svc: Svc, version: str | None = None) -> None:
    svc.catalog.delete(caller, name, version)


@router.get("/models/{name}/download", name="model.download",
            responses={200: {"content": {"application/octet-stream": {}}}, 403: {"description": "Not downloadable"}})
def download_model(name: str, caller: Caller, svc: Svc, version: str | None = None,
                   file: str | None = None) -> VerifiedDownload:
    """The file's bytes, verified against the recorded sha256 while they are sent (P13): a file
    whose stored bytes no longer match is refused, before its first byte when that is possible,
    otherwise by closing the connection before its last chunk."""
    return VerifiedDownload(VerifiedRead(svc.catalog.download_file(caller, name, version, file)))


@router.post("/model-uploads", response_model=UploadOut, status_code=status.HTTP_201_CREATED,
             name="model.upload.create")
def create_upload(body: UploadCreate, caller: Caller, svc: Svc) -> UploadOut:
    return upload_out(svc.catalog.begin_upload(caller, body))


@router.get("/model-uploads/{upload_id}", response_model=UploadOut, name="model.upload.read")
def get_upload(upload_id: str, caller: Caller, svc: Svc) -> UploadOut:
    return upload_out(svc.catalog.get_upload(caller, upload_id))


@router.put("/model-uploads/{upload_id}/files/{path:path}", response_model=UploadOut, name="model.upload.file",
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
async def put_upload_file(upload_id: str, path: str, request: Request, caller: Caller, svc: Svc) -> UploadOut:
    chunks = svc.identity.activity.aguard(caller.workspace_id, request.stream())  # stops if the workspace goes
    return upload_out(await svc.catalog.put_upload_file(caller, upload_id, path, chunks))


@router.post("/model-uploads/{upload_id}/commit", response_model=ModelDetailOut,
             status_code=status.HTTP_201_CREATED, name="model.import")
async def commit_upload(upload_id: str, caller: Caller, svc: Svc) -> dict:
    return model_out(await _scan_slot(svc, svc.catalog.commit_upload, caller, upload_id), detail=True)


@router.delete("/model-uploads/{upload_id}", status_code=status.HTTP_204_NO_CONTENT, name="model.upload.abort")
def abort_upload(upload_id: str, caller: Caller, svc: Svc) -> None:
    svc.catalog.abort_upload(caller, upload_id)
