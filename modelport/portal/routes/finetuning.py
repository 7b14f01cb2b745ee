"""Fine-tuning pages: jobs, a form to start one, a job's page with its live loss chart and
progress (htmx polls the chart every two seconds while the job runs), and its private model."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from modelport.api.deps import Services
from modelport.catalog.service import Filters
from modelport.finetuning.schemas import JobCreate, JobOut
from modelport.identity.principal import Principal
from modelport.offload import run_blocking
from modelport.portal import charts
from modelport.portal.routes.deployments import invalid
from modelport.portal.web import Me, PortalRoute, Svc, form, redirect, render

router = APIRouter(route_class=PortalRoute, include_in_schema=False)
RUNNING = ("queued", "running")


@router.get("/finetuning")
async def jobs(request: Request, me: Me, svc: Svc) -> HTMLResponse:
    rows = await run_blocking(svc.finetuning.list, me)
    jobs = [await run_blocking(svc.finetuning.out, j) for j in rows]
    models, datasets = [], []
    if me.can("finetuning.write"):
        found, _ = await run_blocking(lambda: svc.catalog.list(me, Filters(include_deprecated=False), limit=200))
        models = [m.name for m in found if m.finetunable and m.source != "finetuned" and m.format == "gguf"]
        datasets = [d.name for d in await run_blocking(svc.datasets.list, me)]
    return render(request, "finetuning.html", jobs=jobs, models=models, datasets=datasets)


@router.post("/finetuning")
async def create(request: Request, me: Me, svc: Svc) -> Response:
    data = await form(request)
    try:
        req = JobCreate(model=data.get("model") or "", dataset=data.get("dataset") or "",
                        validation_dataset=data.get("validation_dataset") or None,
                        epochs=data.get("epochs") or 1, batch_size=data.get("batch_size") or 4,
                        learning_rate_multiplier=data.get("learning_rate_multiplier") or 1.0,
                        suffix=data.get("suffix") or None)
    except ValidationError as exc:
        raise invalid(exc) from None
    job = await run_blocking(svc.finetuning.create, me, req)
    return redirect(f"/finetuning/{job.id}")


def _job_view(me: Principal, svc: Services, job_id: str) -> tuple[JobOut, charts.Line]:
    out = svc.finetuning.out(svc.finetuning.get(me, job_id))
    line = charts.line([(p.step, p.train_loss) for p in out.losses])
    return out, line


@router.get("/finetuning/{job_id}")
async def job_page(job_id: str, request: Request, me: Me, svc: Svc) -> HTMLResponse:
    job, line = await run_blocking(_job_view, me, svc, job_id)
    return render(request, "job.html", job=job, line=line, chart=charts, running=job.status in RUNNING)


@router.get("/finetuning/{job_id}/progress")
async def job_progress(job_id: str, request: Request, me: Me, svc: Svc) -> HTMLResponse:
    """The live part of the job's page (htmx replaces it while the job runs)."""
    job, line = await run_blocking(_job_view, me, svc, job_id)
    return render(request, "_job_progress.html", job=job, line=line, chart=charts, running=job.status in RUNNING)


@router.post("/finetuning/{job_id}/cancel")
async def cancel(job_id: str, request: Request, me: Me, svc: Svc) -> Response:
    await form(request)
    await run_blocking(svc.finetuning.cancel, me, job_id)
    return redirect(f"/finetuning/{job_id}")
