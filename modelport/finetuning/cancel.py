"""Stopping fine-tuning jobs whose data goes away: a deleted dataset, a deleted workspace.

A queued job is cancelled at once. A running job is asked to stop (`cancel_requested`): the
runner kills its trainer within a poll interval, and `FinetuningService.register` refuses to
register the model of a job whose cancellation was requested, so a trainer that had already
finished cannot sneak its model in. The reason is kept in the job's `error` and shown to its
owner. Plain functions on a session, so that the dataset and workspace deletions cancel in the
same transaction as their own first step.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from modelport.audit import service as audit
from modelport.db.base import utcnow
from modelport.db.tables import FinetuneJob
from modelport.errors import Conflict
from modelport.identity.principal import Principal

DATASET_DELETED = ("Cancelled: a dataset this job reads was deleted, so it cannot finish; no model was registered. "
                   "Upload the data again and create a new job.")
WORKSPACE_DELETED = "Cancelled: the workspace is being deleted; no model was registered."


class JobCancelled(Conflict):
    """The job may not register a model any more (its data is gone, or it was cancelled)."""

    code = "job_cancelled"


def cancel_jobs(s: Session, actor: Principal | None, where: ColumnElement[bool], reason: str) -> list[str]:
    """Cancel the queued jobs and stop the running ones that match `where`; their ids."""
    active = FinetuneJob.status.in_(("queued", "running")) & FinetuneJob.result_model_id.is_(None)
    found = s.execute(select(FinetuneJob.id, FinetuneJob.workspace_id).where(where, active))
    jobs = [(job_id, workspace_id) for job_id, workspace_id in found]
    if not jobs:
        return []
    ids = [job_id for job_id, _ in jobs]
    s.execute(update(FinetuneJob).where(FinetuneJob.id.in_(ids), FinetuneJob.status == "queued")
              .values(status="cancelled", finished_at=utcnow(), eta_seconds=None, error=reason))
    s.execute(update(FinetuneJob).where(FinetuneJob.id.in_(ids), FinetuneJob.status == "running")
              .values(cancel_requested=True, error=reason))
    for job_id, workspace_id in jobs:
        audit.record(s, actor, "finetune.cancel", resource_type="finetune_job", resource_id=job_id,
                     workspace_id=workspace_id, detail={"reason": "dataset_deleted" if reason == DATASET_DELETED
                                                         else "workspace_deleted"})
    return ids


def cancel_jobs_reading(s: Session, actor: Principal | None, workspace_id: str, dataset_id: str) -> list[str]:
    """The jobs that train or validate on `dataset_id`, which is being deleted."""
    reads = or_(FinetuneJob.dataset_id == dataset_id, FinetuneJob.validation_dataset_id == dataset_id)
    return cancel_jobs(s, actor, (FinetuneJob.workspace_id == workspace_id) & reads, DATASET_DELETED)


def cancel_workspace_jobs(s: Session, actor: Principal | None, workspace_id: str) -> list[str]:
    return cancel_jobs(s, actor, FinetuneJob.workspace_id == workspace_id, WORKSPACE_DELETED)
