"""Routes: health, readiness, metrics, the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from modelport import __version__
from modelport.api.deps import Caller, Svc
from modelport.audit import service as audit
from modelport.db import migrate
from modelport.metrics.registry import CONTENT_TYPE

router = APIRouter()


@router.get("/healthz", name="health.alive")
def healthz() -> dict:
    return {"status": "ok", "version": __version__}


class ReadyOut(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description="Each check (`database`, `migrations`) and its result.")


@router.get("/readyz", name="health.ready", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "Not ready: `checks` says which check failed."}})
def readyz(svc: Svc) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        svc.db.ping()
        checks["database"] = "ok"
        checks["migrations"] = "ok" if migrate.is_current(svc.db.engine) else "pending"
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = f"unreachable ({type(exc).__name__})"
        checks.setdefault("migrations", "unknown")
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", name="ops.metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format: requests, tokens, latency, queue depth, "
                             "throttles and content-filter actions, labelled by deployment id and status only."},
                       401: {"description": "No API key (or a deployment key)."},
                       403: {"description": "A key without platform-admin power."}})
def metrics(caller: Caller, svc: Svc) -> Response:
    """Operational metrics for platform admins' API keys (401 without a key, 403 for other keys)."""
    return Response(svc.metrics.scrape(caller), media_type=CONTENT_TYPE)


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor_user_id: str | None
    actor_key_id: str | None
    workspace_id: str | None
    action: str
    resource_type: str | None
    resource_id: str | None
    outcome: str
    status_code: int | None
    request_id: str | None
    detail: dict


@router.get("/api/v1/audit", response_model=list[AuditOut], name="audit.list")
def list_audit(caller: Caller, svc: Svc, all_workspaces: bool = False, workspace: str | None = None,
               action: str | None = None,
               since: Annotated[datetime | None, Query(description="A date-time, or seconds since the epoch.",
                                                       json_schema_extra={"anyOf": [
                                                           {"type": "string", "format": "date-time"},
                                                           {"type": "number"}, {"type": "null"}]})] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100, before_id: int | None = None) -> list[AuditOut]:
    ws_id = svc.identity.get_workspace(caller, workspace).id if workspace else None
    with svc.db.session() as s:
        rows = audit.query(s, caller, all_workspaces=all_workspaces, workspace_id=ws_id, action=action,
                           since=since, limit=limit, before_id=before_id)
        return [AuditOut.model_validate(r, from_attributes=True) for r in rows]
