"""Deleting a workspace: everything it ran stopped, everything it stored destroyed, its bills kept.

    DELETE /api/v1/workspaces/{ref}  (its owner, or a platform admin)

1. begin, in one transaction: the workspace becomes `deleting` (its API keys are refused on every
   server from here, within the 5-second authentication cache of each), its deployments
   `deleting`, its queued fine-tuning jobs cancelled and its running ones asked to stop; on this
   server no new request of the workspace is accepted and uploads in flight stop at their next
   chunk (identity/activity.py);
2. its routes leave the gateway's routing table (its deployment keys get 401 from here) and the
   worker pools that served only it stop;
3. the requests of the workspace still running on this server end; the running trainers stop;
4. the model uploads begun in it are discarded, the files of its private (imported) models removed;
5. the datastore purges it: its workspace key is destroyed (every version, in the local keystore,
   and a customer-managed key created there), so nothing it stored can be decrypted again, not
   even from a backup of its ledger and blobs; a customer-managed key in an external KMS is only
   forgotten (the customer decides whether to destroy it); then its ledger and blobs are removed;
6. its rows go (deployments, jobs, models, datasets, blocklists, API keys, memberships, the
   workspace), and `workspace.delete` is audited with what was removed. Usage records and the
   audit log (counts and ids, never content) stay, for chargeback. On SQLite the write-ahead log
   is checkpointed, so that the removed rows do not linger in it.

A deletion that fails halfway leaves the workspace `deleting`: nothing of it can be used, every
step above can be repeated, and a retry of the DELETE (by a platform admin: the owner's keys are
already refused) or the next start of the server finishes it. A workspace never looks deleted
while keys, workers or files of it remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Column, Table, delete, func, select, update

from modelport.audit import service as audit
from modelport.catalog.service import CatalogService
from modelport.config import Settings
from modelport.datastore.store import Datastore
from modelport.db.base import Base, utcnow
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Dataset, Deployment, FinetuneJob, Workspace
from modelport.deployments.lifecycle import DeploymentLifecycle
from modelport.errors import ModelportError, ServiceUnavailable
from modelport.finetuning.cancel import cancel_workspace_jobs
from modelport.identity.principal import Principal
from modelport.identity.service import IdentityService
from modelport.offload import run_blocking
from modelport.safety.service import SafetyService

log = logging.getLogger("modelport.offboarding")

REQUESTS_WAIT_SECONDS = 60.0  # control-plane requests of the workspace still running on this server
TRAINERS_WAIT_SECONDS = 60.0  # running trainers (the runner stops one within its poll interval)


@dataclass(frozen=True)
class Begun:
    workspace_id: str
    jobs_cancelled: int


class Offboarding:
    def __init__(self, settings: Settings, db: Database, identity: IdentityService, lifecycle: DeploymentLifecycle,
                 catalog: CatalogService, safety: SafetyService, datastore: Datastore) -> None:
        self.settings = settings
        self.db = db
        self.identity = identity
        self.lifecycle = lifecycle
        self.catalog = catalog
        self.safety = safety
        self.datastore = datastore

    async def delete_workspace(self, actor: Principal, ref: str) -> dict[str, Any]:
        """Delete the workspace `actor` names (authorised as in the role table); what was removed."""
        begun = await run_blocking(self._begin, actor, ref)
        # The deleting request itself counts among the workspace's requests when it is one of them.
        own = 1 if actor.workspace_id == begun.workspace_id else 0
        return await self._finish(begun, actor, own_requests=own, trainers_wait=TRAINERS_WAIT_SECONDS)

    async def resume(self) -> list[str]:
        """On start: finish the deletions a stopped server left `deleting`; the ids it finished.

        No request and no trainer runs yet in this process, so nothing is waited for: a job left
        `running` is cancelled outright. A deletion that fails again stays `deleting` (logged) and
        does not keep the server from starting.
        """
        with self.db.session() as s:
            pending = list(s.scalars(select(Workspace.id).where(Workspace.state == "deleting")))
        finished = []
        for ws_id in pending:
            try:
                begun = await run_blocking(self._begin_again, ws_id)
                await self._finish(begun, None, own_requests=0, trainers_wait=0.0)
                finished.append(ws_id)
            except Exception:  # the server starts anyway; the workspace stays unusable
                log.exception("an unfinished workspace deletion could not be finished; it stays 'deleting'",
                              extra={"workspace_id": ws_id})
        return finished

    # -- steps ------------------------------------------------------------------------------

    def _begin(self, actor: Principal, ref: str) -> Begun:
        with self.db.session() as s:
            ws = self.identity.authorize_delete(s, actor, ref)
            begun = self._mark(s, actor, ws.id)
            audit.record(s, actor, "workspace.delete.begin", resource_type="workspace", resource_id=ws.id,
                         workspace_id=ws.id)
        # Committed: refuse what comes next. A request that got in before is counted, and waited for.
        self.identity.activity.close(begun.workspace_id)
        self.identity.invalidate_cache()
        return begun

    def _begin_again(self, ws_id: str) -> Begun:
        self.identity.activity.close(ws_id)
        with self.db.session() as s:
            begun = self._mark(s, None, ws_id)
            # Nothing runs a trainer in a process that just started: a job left running is over.
            s.execute(update(FinetuneJob).where(FinetuneJob.workspace_id == ws_id, FinetuneJob.status == "running")
                      .values(status="cancelled", finished_at=utcnow()))
        self.identity.invalidate_cache()
        return begun

    @staticmethod
    def _mark(s: Any, actor: Principal | None, ws_id: str) -> Begun:
        s.execute(update(Workspace).where(Workspace.id == ws_id).values(state="deleting"))
        s.execute(update(Deployment).where(Deployment.workspace_id == ws_id).values(state="deleting"))
        return Begun(ws_id, len(cancel_workspace_jobs(s, actor, ws_id)))

    async def _finish(self, begun: Begun, actor: Principal | None, *, own_requests: int,
                      trainers_wait: float) -> dict[str, Any]:
        ws_id = begun.workspace_id
        try:
            deployments = await self.lifecycle.stop_workspace(ws_id)
            if not await run_blocking(self.identity.activity.wait_idle, ws_id, REQUESTS_WAIT_SECONDS,
                                      own_requests):
                raise ServiceUnavailable("Requests of this workspace are still running on this server.")
            await self._wait_for_trainers(ws_id, trainers_wait)
            report = await run_blocking(self._remove, ws_id, actor, len(deployments), begun.jobs_cancelled)
        except ModelportError as exc:
            await run_blocking(self._record_failure, ws_id, actor, exc)
            raise ServiceUnavailable(
                "The workspace is being deleted, but the deletion did not finish: "
                f"{exc.message.rstrip('.')}. Nothing of it can be used any more (its keys are refused); "
                "repeat the deletion (a platform admin's key) or restart the server, and it finishes.",
                details={"workspace_id": ws_id, "cause": exc.code}) from exc
        self.lifecycle.forget_workspace(ws_id)  # a route a concurrent refresh put back meanwhile
        self.identity.invalidate_cache()
        self.identity.activity.forget(ws_id)
        log.info("workspace deleted", extra={"event": "workspace.delete", "workspace_id": ws_id})
        return report

    async def _wait_for_trainers(self, ws_id: str, timeout: float) -> None:
        """Until no job of the workspace runs. A job still `running` after the wait runs on no
        trainer of this server; it cannot register anything (its cancellation is requested and
        its workspace key will be destroyed), so the deletion goes on without it."""
        deadline = time.monotonic() + timeout
        while await run_blocking(self._running_jobs, ws_id):
            if time.monotonic() >= deadline:
                log.warning("a fine-tuning job of the workspace being deleted did not stop in time",
                            extra={"workspace_id": ws_id})
                return
            await asyncio.sleep(min(0.2, self.settings.finetune_poll_seconds))

    def _running_jobs(self, ws_id: str) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(FinetuneJob).where(
                FinetuneJob.workspace_id == ws_id, FinetuneJob.status == "running")) or 0

    def _remove(self, ws_id: str, actor: Principal | None, deployments: int, jobs_cancelled: int) -> dict[str, Any]:
        uploads = self.catalog.store.discard_uploads_of(ws_id)
        with self.db.session() as s:
            models = [(model_id, source) for model_id, source in s.execute(
                select(CatalogModel.id, CatalogModel.source).where(CatalogModel.owner_workspace_id == ws_id))]
        for model_id, source in models:
            if source == "imported":
                self.catalog.store.remove_model(model_id)
        purge = self.datastore.purge_workspace(ws_id)  # the point of no return for its data
        # Counts that are still in memory are written before the rows they point at go.
        self.lifecycle.flush_usage()
        self.safety.flush_counts()
        report = {"deployments": deployments, "jobs_cancelled": jobs_cancelled, "uploads_cancelled": uploads,
                  "models": len(models), "objects_shredded": purge.objects, "keys_destroyed": len(purge.keys_destroyed),
                  "cmk_forgotten": purge.cmk_forgotten}
        with self.db.session() as s:
            report["datasets"] = s.scalar(select(func.count()).select_from(Dataset)
                                          .where(Dataset.workspace_id == ws_id)) or 0
            for table, column in _owned_tables():
                s.execute(delete(table).where(column == ws_id))
            s.execute(delete(cast(Table, Workspace.__table__)).where(Workspace.id == ws_id))
            audit.record(s, actor, "workspace.delete", resource_type="workspace", resource_id=ws_id,
                         workspace_id=ws_id, detail=report)
        self._scrub_sqlite()
        return report

    def _record_failure(self, ws_id: str, actor: Principal | None, exc: ModelportError) -> None:
        with contextlib.suppress(Exception), self.db.session() as s:
            audit.record(s, actor, "workspace.delete", resource_type="workspace", resource_id=ws_id,
                         workspace_id=ws_id, outcome="failed", detail={"cause": exc.code})

    def _scrub_sqlite(self) -> None:
        """SQLite overwrites freed pages (secure_delete) but keeps old page images in its WAL until
        a checkpoint: checkpoint now, so that the removed rows leave the files."""
        if self.db.engine.dialect.name != "sqlite":
            return
        try:
            with self.db.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # a busy database checkpoints later by itself; the deletion is done
            log.warning("could not checkpoint the SQLite write-ahead log after a workspace deletion")


def _owned_tables() -> list[tuple[Table, Column]]:
    """Every table with a foreign key to the workspace, dependents first (deployments before the
    models they name, jobs before their base models): what a workspace's deletion removes. Tables
    that name a workspace without a foreign key (usage records, the audit log) are kept on purpose:
    counts and ids for chargeback and accountability, never content."""
    workspaces = Workspace.__table__
    owned = []
    for table in reversed(Base.metadata.sorted_tables):
        for fk in table.foreign_keys:
            if fk.column.table is workspaces:
                owned.append((table, fk.parent))
    return owned
