"""Routes: fine-tuning jobs (create, list, show, cancel) and deleting a fine-tuned model."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from modelport.api.deps import Caller, Svc
from modelport.finetuning.schemas import JobCreate, JobOut

router = APIRouter(prefix="/api/v1/finetuning")


@router.post("/jobs", response_model=JobOut, status_code=status.HTTP_201_CREATED, name="finetune.create")
def create_job(body: JobCreate, caller: Caller, svc: Svc) -> JobOut:
    """Queue a LoRA fine-tune of a catalog model on a dataset of this workspace."""
    return svc.finetuning.out(svc.finetuning.create(caller, body))


@router.get("/jobs", response_model=list[JobOut], name="finetune.list")
def list_jobs(caller: Caller, svc: Svc) -> list[JobOut]:
    return [svc.finetuning.out(j) for j in svc.finetuning.list(caller)]


@router.get("/jobs/{job_id}", response_model=JobOut, name="finetune.read")
def get_job(job_id: str, caller: Caller, svc: Svc) -> JobOut:
    """Status, progress, losses per step and the estimated time left."""
    return svc.finetuning.out(svc.finetuning.get(caller, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, name="finetune.cancel")
def cancel_job(job_id: str, caller: Caller, svc: Svc) -> JobOut:
    return svc.finetuning.out(svc.finetuning.cancel(caller, job_id))


@router.delete("/models/{name}", status_code=status.HTTP_204_NO_CONTENT, name="finetune.model.delete")
async def delete_model(name: str, caller: Caller, svc: Svc, confirm: bool = Query(default=False)) -> None:
    """Stop the model's deployments, destroy its keys and weights (crypto-shredding), remove it."""
    await svc.lifecycle.delete_finetuned_model(caller, name, confirm)
