"""The audit log of control-plane actions: who, what, which resource, when, outcome.

Only identifiers and outcomes are recorded, never a request body, a key or user content.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.db.tables import AuditEvent
from modelport.identity.principal import Principal


def record(
    session: Session,
    actor: Principal | None,
    action: str,
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    outcome: str = "success",
    status_code: int | None = None,
    workspace_id: str | None = None,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            actor_user_id=actor.user_id if actor else None,
            actor_key_id=actor.key_id if actor else None,
            workspace_id=workspace_id if workspace_id is not None else (actor.workspace_id if actor else None),
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            outcome=outcome,
            status_code=status_code,
            request_id=request_id,
            detail=detail or {},
        )
    )


def query(
    session: Session,
    actor: Principal,
    *,
    all_workspaces: bool = False,
    workspace_id: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> Sequence[AuditEvent]:
    """Owners read their workspace's events; a platform admin may read every workspace's."""
    if all_workspaces or (workspace_id and workspace_id != actor.workspace_id):
        actor.require("platform.audit")
    else:
        actor.require("audit.read")
        workspace_id = actor.workspace_id
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if workspace_id:
        stmt = stmt.where(AuditEvent.workspace_id == workspace_id)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if since:
        stmt = stmt.where(AuditEvent.at >= since)
    if before_id:
        stmt = stmt.where(AuditEvent.id < before_id)
    return session.scalars(stmt).all()
