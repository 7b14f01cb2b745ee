"""Fine-tuning jobs (create, list, show, cancel), the models they register, and their weights.

A job belongs to one workspace and reads only that workspace's datasets (P2, P9): a dataset
of another workspace is simply not found. Its result is a catalog model private to the
workspace (`source="finetuned"`, never downloadable) whose weights, a LoRA adapter GGUF, live
only in the encrypted datastore under the model's id (P10, P11). `FinetunedWeights` is what
the deployment manager uses to serve one: the base model's file plus the decrypted adapter in
a memfd. Deleting the model stops its deployments and crypto-shreds the adapter (P12).
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from modelport.audit import service as audit
from modelport.catalog.service import GLOBAL_SCOPE, CatalogService
from modelport.datasets.service import DatasetService
from modelport.datastore.store import Datastore
from modelport.db.base import new_id, utcnow
from modelport.db.engine import Database, rowcount
from modelport.db.tables import CatalogModel, Dataset, Deployment, FinetuneJob, Workspace
from modelport.deployments.schemas import Isolation
from modelport.errors import Conflict, InvalidInput, NotFound
from modelport.finetuning.cancel import DATASET_DELETED, JobCancelled
from modelport.finetuning.schemas import JobCreate, JobOut, LossPoint
from modelport.identity.principal import Principal
from modelport.policies.facts import ModelFacts

BASE_LEARNING_RATE = 1e-3
LORA_RANK = 16
LORA_ALPHA = 32
MAX_SEQ_LEN = 256
TERMINAL = ("succeeded", "failed", "cancelled")


class FinetuningService:
    def __init__(self, db: Database, catalog: CatalogService, datasets: DatasetService, datastore: Datastore,
                 max_active_jobs: int = 16) -> None:
        self.db = db
        self.catalog = catalog
        self.datasets = datasets
        self.datastore = datastore
        self.max_active_jobs = max_active_jobs
        self._cap_lock = threading.Lock()  # counting a workspace's jobs and adding one: atomic

    # -- jobs (control plane) ---------------------------------------------------------------

    def create(self, actor: Principal, req: JobCreate) -> FinetuneJob:
        actor.require("finetuning.write")
        with self.db.session() as s:
            try:
                base = self.catalog.resolve(s, actor, req.model)
            except NotFound as exc:
                raise NotFound("No model of that name is visible to this workspace; 'modelport models list' "
                               "shows them.", field="model") from exc
            if not base.finetunable or base.source == "finetuned":
                raise InvalidInput(f"Model '{base.name}' cannot be fine-tuned; the catalog marks the models that can "
                                   "(finetunable: true).", field="model")
            if base.format != "gguf" or base.task != "chat-completion":
                raise InvalidInput(f"Model '{base.name}' is not a GGUF chat model; only those are fine-tuned here.",
                                   field="model")
            self.catalog.policies.enforce(actor, "create_finetune", ModelFacts.seen_by(base, actor))
            base_id = base.id
        train = self._dataset(actor, req.dataset, "dataset")
        val = self._dataset(actor, req.validation_dataset, "validation_dataset") if req.validation_dataset else None
        hp = {"epochs": req.epochs, "batch_size": req.batch_size,
              "learning_rate_multiplier": req.learning_rate_multiplier,
              "learning_rate": BASE_LEARNING_RATE * req.learning_rate_multiplier, "seed": req.seed,
              "lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA, "max_seq_len": MAX_SEQ_LEN}
        with self._cap_lock, self.db.session() as s:
            s.execute(select(Workspace.id).where(Workspace.id == actor.workspace_id).with_for_update())
            active = s.scalar(select(func.count()).select_from(FinetuneJob).where(
                FinetuneJob.workspace_id == actor.workspace_id, FinetuneJob.status.in_(("queued", "running")))) or 0
            if active >= self.max_active_jobs:
                raise Conflict(
                    f"This workspace has {active} fine-tuning jobs queued or running, the most this server allows "
                    f"(MODELPORT_MAX_ACTIVE_FINETUNE_JOBS_PER_WORKSPACE={self.max_active_jobs}); wait for one to "
                    "finish or cancel one.",
                    details={"limit": "max_active_finetune_jobs_per_workspace", "current": active,
                             "max": self.max_active_jobs})
            job = FinetuneJob(id=new_id("ftjob"), workspace_id=actor.workspace_id, base_model_id=base_id,
                              dataset_id=train.id, validation_dataset_id=val.id if val else None, hyperparameters=hp,
                              suffix=req.suffix, status="queued", losses=[], created_by=actor.user_id)
            s.add(job)
            audit.record(s, actor, "finetune.create", resource_type="finetune_job", resource_id=job.id,
                         detail={"model": base_id, "dataset": train.id})
            return job

    def _dataset(self, actor: Principal, ref: str, field: str) -> Dataset:
        try:
            return self.datasets.get(actor, ref)
        except NotFound as exc:
            raise NotFound("No dataset of that name or id in this workspace; 'modelport datasets list' shows them.",
                           field=field) from exc

    def list(self, actor: Principal) -> Sequence[FinetuneJob]:
        actor.require("finetuning.read")
        with self.db.session() as s:
            return s.scalars(select(FinetuneJob).where(FinetuneJob.workspace_id == actor.workspace_id)
                             .order_by(FinetuneJob.created_at.desc(), FinetuneJob.id)).all()

    def get(self, actor: Principal, job_id: str) -> FinetuneJob:
        actor.require("finetuning.read")
        with self.db.session() as s:
            job = s.get(FinetuneJob, job_id)
            if job is None or job.workspace_id != actor.workspace_id:
                raise NotFound(f"Fine-tuning job '{job_id}' not found.")
            return job

    def cancel(self, actor: Principal, job_id: str) -> FinetuneJob:
        actor.require("finetuning.write")
        self.get(actor, job_id)
        with self.db.session() as s:
            job = s.get_one(FinetuneJob, job_id)
            if job.status in TERMINAL:
                raise Conflict(f"The job has already {job.status}; there is nothing to cancel.")
            if job.status == "queued":
                job.status, job.finished_at, job.eta_seconds = "cancelled", utcnow(), None
            else:
                job.cancel_requested = True  # the runner stops the trainer within a poll interval
            audit.record(s, actor, "finetune.cancel", resource_type="finetune_job", resource_id=job.id)
            return job

    def out(self, job: FinetuneJob) -> JobOut:
        with self.db.session() as s:
            base = s.get(CatalogModel, job.base_model_id)
            names = {ds_id: name for ds_id, name in s.execute(select(Dataset.id, Dataset.name).where(
                Dataset.id.in_([job.dataset_id, job.validation_dataset_id or ""])))}
            result = s.get(CatalogModel, job.result_model_id) if job.result_model_id else None
        return JobOut(
            # mypy is told to ignore the next line: the table holds JobOut's statuses only
            id=job.id, status=job.status, model=base.name if base else job.base_model_id,  # type: ignore[arg-type]
            dataset=names.get(job.dataset_id, job.dataset_id),
            validation_dataset=names.get(job.validation_dataset_id, job.validation_dataset_id)
            if job.validation_dataset_id else None,
            hyperparameters=job.hyperparameters, suffix=job.suffix, step=job.step, total_steps=job.total_steps,
            progress=round(job.step / job.total_steps, 4) if job.total_steps else 0.0,
            eta_seconds=job.eta_seconds, trained_tokens=job.trained_tokens,
            losses=[LossPoint(**p) for p in job.losses or []], fine_tuned_model=result.name if result else None,
            error=job.error,
            isolation=Isolation.model_validate(job.isolation) if job.isolation is not None else None,
            created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at,
        )

    # -- the runner's side ------------------------------------------------------------------

    def requeue_interrupted(self, max_attempts: int) -> None:
        """Jobs left `running` by a server that stopped: back to the queue, or failed."""
        with self.db.session() as s:
            for job in s.scalars(select(FinetuneJob).where(FinetuneJob.status == "running")):
                if job.cancel_requested:
                    job.status, job.finished_at = "cancelled", utcnow()
                elif job.attempts >= max_attempts:
                    job.status, job.finished_at = "failed", utcnow()
                    job.error = (f"The server stopped during this job {job.attempts} times; it was not retried "
                                 "again. Create a new job (a smaller dataset or fewer epochs finishes sooner).")
                else:
                    job.status, job.step, job.losses, job.eta_seconds = "queued", 0, [], None
                job.eta_seconds = None

    def claim_next(self) -> FinetuneJob | None:
        """The oldest queued job, atomically moved to `running` (safe with several servers)."""
        with self.db.session() as s:
            job_id = s.scalar(select(FinetuneJob.id).where(FinetuneJob.status == "queued")
                              .order_by(FinetuneJob.created_at, FinetuneJob.id).limit(1))
            if job_id is None:
                return None
            claimed = s.execute(update(FinetuneJob).where(FinetuneJob.id == job_id, FinetuneJob.status == "queued")
                                .values(status="running", started_at=utcnow(), attempts=FinetuneJob.attempts + 1,
                                        step=0, losses=[]))
            if rowcount(claimed) != 1:
                return None
        with self.db.session() as s:
            return s.get(FinetuneJob, job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self.db.session() as s:
            return bool(s.scalar(select(FinetuneJob.cancel_requested).where(FinetuneJob.id == job_id)))

    def record_progress(self, job_id: str, event: dict[str, Any]) -> None:
        with self.db.session() as s:
            job = s.get(FinetuneJob, job_id)
            if job is None or job.status != "running":
                return
            job.step, job.total_steps = int(event["step"]), int(event["total_steps"])
            job.eta_seconds = float(event["eta_seconds"])
            job.trained_tokens = int(event.get("tokens", 0))
            point = {"step": job.step, "train_loss": float(event["train_loss"]),
                     "validation_loss": None if event.get("validation_loss") is None
                     else float(event["validation_loss"])}
            job.losses = [*(job.losses or []), point]

    def set_isolation(self, job_id: str, isolation: dict[str, bool]) -> None:
        """What the trainer's sandbox isolates (network, files, processes), shown on the job."""
        with self.db.session() as s:
            job = s.get(FinetuneJob, job_id)
            if job is not None:
                job.isolation = isolation

    def finish(self, job_id: str, status: str, error: str | None = None, model_id: str | None = None) -> None:
        with self.db.session() as s:
            job = s.get(FinetuneJob, job_id)
            if job is None:
                return
            job.status, job.result_model_id = status, model_id
            if error is not None or status != "cancelled":  # a cancellation keeps the reason it was given
                job.error = error
            job.finished_at, job.eta_seconds = utcnow(), None
            audit.record(s, None, f"finetune.{status}", resource_type="finetune_job", resource_id=job_id,
                         workspace_id=job.workspace_id)

    def base_model(self, job: FinetuneJob) -> CatalogModel:
        with self.db.session() as s:
            return s.get_one(CatalogModel, job.base_model_id)

    def register(self, job: FinetuneJob, adapter: bytes) -> str:
        """Encrypt the adapter into the datastore and register the private model; its id.

        Refused (JobCancelled, the adapter shredded) when the job's cancellation was requested or
        its data is gone: a dataset deleted while the job trained must not live on in a model.
        """
        model_id = new_id("mdl")
        info = self.datastore.put(job.workspace_id, model_id, adapter)
        try:
            with self.db.session() as s:
                self._claim_result(s, job, model_id)
                base = s.get_one(CatalogModel, job.base_model_id)
                name = f"{base.name}-ft-{job.suffix or job.id.removeprefix('ftjob_')[:8]}"[:100]
                taken = s.scalar(select(func.count()).select_from(CatalogModel).where(
                    CatalogModel.scope_key == job.workspace_id, CatalogModel.name == name)) or 0
                row = CatalogModel(
                    id=model_id, name=name, version=str(taken + 1), scope_key=job.workspace_id,
                    owner_workspace_id=job.workspace_id, publisher=base.publisher, license_spdx=base.license_spdx,
                    license_url=base.license_url, task=base.task, format=base.format,
                    card=f"LoRA fine-tune of {base.name}, trained by job {job.id} in this workspace.",
                    model_metadata={"base_model_id": base.id, "base_model": base.name, "job_id": job.id,
                                    "adapter": {"type": "lora", "rank": job.hyperparameters.get("lora_rank"),
                                                "size": info.size, "sha256": info.sha256}},
                    size_bytes=info.size, scan_status="passed",
                    scan_report={"note": "adapter produced by this platform's trainer; the base model's scan applies"},
                    curated=False, downloadable=False, finetunable=False,
                    deployment_types=list(base.deployment_types or []), source="finetuned", created_by=job.created_by,
                )
                s.add(row)
                audit.record(s, None, "model.finetuned", resource_type="model", resource_id=model_id,
                             workspace_id=job.workspace_id, detail={"job": job.id})
        except BaseException:
            self.datastore.delete(job.workspace_id, model_id)
            raise
        return model_id

    @staticmethod
    def _claim_result(s: Session, job: FinetuneJob, model_id: str) -> None:
        # A write first: it takes the job's row lock (PostgreSQL) or the write lock (SQLite), so a
        # dataset deletion that cancels the job either came before (and this refuses) or waits for
        # this transaction (and finds the result already registered).
        claimed = s.execute(update(FinetuneJob).where(
            FinetuneJob.id == job.id, FinetuneJob.status == "running", FinetuneJob.cancel_requested.is_(False),
            FinetuneJob.result_model_id.is_(None)).values(result_model_id=model_id))
        if rowcount(claimed) != 1:
            reason = s.scalar(select(FinetuneJob.error).where(FinetuneJob.id == job.id))
            raise JobCancelled(reason or "The job was cancelled; no model was registered.")
        needed = {job.dataset_id, *([job.validation_dataset_id] if job.validation_dataset_id else [])}
        present = s.scalar(select(func.count()).select_from(Dataset).where(
            Dataset.workspace_id == job.workspace_id, Dataset.id.in_(needed))) or 0
        if present != len(needed):
            raise JobCancelled(DATASET_DELETED)

    # -- fine-tuned models: deletion (P12) --------------------------------------------------

    def model_for_delete(self, actor: Principal, name: str, confirm: bool) -> tuple[CatalogModel, builtins.list[str]]:
        actor.require("models.manage")
        with self.db.session() as s:
            try:
                row = self.catalog.resolve(s, actor, name)
            except NotFound as exc:
                raise NotFound(f"Fine-tuned model '{name}' not found.") from exc
            if row.source != "finetuned" or row.scope_key == GLOBAL_SCOPE:
                raise NotFound(f"Fine-tuned model '{name}' not found.")
            deps = list(s.scalars(select(Deployment.id).where(Deployment.model_id == row.id)))
        if not confirm:
            raise Conflict(f"Deleting '{row.name}' stops its {len(deps)} deployment(s) and destroys its weights for "
                           "good; repeat with confirm=true (CLI: --yes).", field="confirm")
        return row, deps

    def shred_model(self, actor: Principal, model: CatalogModel) -> None:
        """Keys first (the point of no return), then the row."""
        try:
            self.datastore.delete(model.owner_workspace_id or "", model.id)
        except NotFound:
            pass  # shredded by an earlier attempt that failed before removing the row
        with self.db.session() as s:
            row = s.get(CatalogModel, model.id)
            if row is not None:
                s.delete(row)
            audit.record(s, actor, "model.delete", resource_type="model", resource_id=model.id,
                         detail={"crypto_shredded": True})


class FinetunedWeights:
    """How the deployment manager serves a fine-tuned model: base GGUF + adapter memfd."""

    def __init__(self, db: Database, datastore: Datastore) -> None:
        self.db = db
        self.datastore = datastore

    def base_of(self, model: CatalogModel) -> CatalogModel:
        with self.db.session() as s:
            base = s.get(CatalogModel, (model.model_metadata or {}).get("base_model_id", ""))
            if base is None:
                raise NotFound(f"The base model of '{model.name}' is no longer in the catalog.")
            return base

    def check(self, model: CatalogModel) -> None:
        """Raise (KeyDisabled, NotFound...) unless the adapter's data keys can be unwrapped now."""
        self.datastore.open(model.owner_workspace_id or "", model.id).close()

    def adapter_memfd(self, model: CatalogModel) -> int:
        """The decrypted adapter in an anonymous memory file: never a path on disk (P11)."""
        fd = os.memfd_create(f"adapter-{model.id}", os.MFD_CLOEXEC)
        try:
            with self.datastore.open(model.owner_workspace_id or "", model.id) as stream:
                for chunk in stream:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd
