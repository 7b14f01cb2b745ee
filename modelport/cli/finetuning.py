"""CLI: fine-tuning jobs (`modelport finetune ...`)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.deployments import isolation_text
from modelport.cli.output import Columns, console, err_console, kv, print_json, table

finetune = typer.Typer(help="Fine-tune catalog models (LoRA) on this workspace's datasets.", no_args_is_help=True)

TERMINAL = ("succeeded", "failed", "cancelled")


def _loss(job: dict) -> str:
    if not job["losses"]:
        return "-"
    last = job["losses"][-1]
    val = last.get("validation_loss")
    return f"{last['train_loss']:.4f}" + (f" (validation {val:.4f})" if val is not None else "")


def _eta(job: dict) -> str:
    return "-" if job.get("eta_seconds") is None else f"{job['eta_seconds']:.0f} s"


JOB_ROWS: Columns = [("ID", "id"), ("STATUS", "status"), ("MODEL", "model"), ("DATASET", "dataset"),
            ("STEP", lambda j: f"{j['step']}/{j['total_steps']}"), ("LOSS", _loss),
            ("RESULT", lambda j: j["fine_tuned_model"] or "-")]
SHOW_ROWS: Columns = [("ID", "id"), ("Status", "status"), ("Base model", "model"), ("Dataset", "dataset"),
             ("Validation dataset", lambda j: j["validation_dataset"] or "-"),
             ("Progress", lambda j: f"{j['step']}/{j['total_steps']} steps ({j['progress'] * 100:.0f}%)"),
             ("Loss", _loss), ("Time left", _eta), ("Fine-tuned model", lambda j: j["fine_tuned_model"] or "-"),
             ("Error", lambda j: j["error"] or "-"), ("Isolation", lambda j: isolation_text(j.get("isolation"))),
             ("Hyperparameters", "hyperparameters"),
             ("Created", "created_at"), ("Started", "started_at"), ("Finished", "finished_at")]


@finetune.command("create")
@handle_errors
def create(ctx: typer.Context,
           model: Annotated[str, typer.Option("--model", help="Base model (finetunable).")],
           dataset: Annotated[str, typer.Option("--dataset", help="Training dataset (name or id).")],
           validation_dataset: Annotated[str | None, typer.Option(help="Validation dataset.")] = None,
           epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 3,
           learning_rate_multiplier: Annotated[float, typer.Option(help="Scales the base rate 1e-3.")] = 1.0,
           batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 4,
           suffix: Annotated[str | None, typer.Option(help="Added to the fine-tuned model's name.")] = None,
           seed: Annotated[int, typer.Option(help="Seed (a job is reproducible).")] = 0,
           json: JsonOpt = False) -> None:
    """Queue a fine-tuning job; prints its id (`ftjob_...`)."""
    body = {"model": model, "dataset": dataset, "validation_dataset": validation_dataset, "epochs": epochs,
            "learning_rate_multiplier": learning_rate_multiplier, "batch_size": batch_size, "suffix": suffix,
            "seed": seed}
    job = client(ctx).request("POST", "/api/v1/finetuning/jobs", json=body)
    if json:
        return print_json(job)
    # Only the id on stdout, so that scripts can capture it: JOB=$(modelport finetune create ...)
    err_console.print(f"Queued fine-tuning job {job['id']}; follow it with "
                      f"'modelport finetune show {job['id']} --follow'.", highlight=False)
    console.print(job["id"], highlight=False)


@finetune.command("list")
@handle_errors
def list_(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the fine-tuning jobs of the current workspace."""
    rows = client(ctx).request("GET", "/api/v1/finetuning/jobs")
    if json:
        return print_json(rows)
    table(rows, JOB_ROWS)


@finetune.command("show")
@handle_errors
def show(ctx: typer.Context, job_id: str,
         follow: Annotated[bool, typer.Option("--follow", help="Print progress until the job ends.")] = False,
         interval: Annotated[float, typer.Option(help="Seconds between updates with --follow.")] = 2.0,
         json: JsonOpt = False) -> None:
    """Status, progress, losses and time left; --follow prints each new step until the job ends."""
    c = client(ctx)
    job = c.request("GET", f"/api/v1/finetuning/jobs/{job_id}")
    if follow:
        seen = -1
        status = None
        while True:
            if job["status"] != status:
                status = job["status"]
                console.print(f"status: {status}")
            for point in job["losses"]:
                if point["step"] > seen:
                    seen = point["step"]
                    val = point.get("validation_loss")
                    console.print(f"step {point['step']}/{job['total_steps']}  train loss {point['train_loss']:.4f}"
                                  + (f"  validation loss {val:.4f}" if val is not None else "")
                                  + f"  time left {_eta(job)}")
            if job["status"] in TERMINAL:
                break
            time.sleep(interval)
            job = c.request("GET", f"/api/v1/finetuning/jobs/{job_id}")
    if json:
        return print_json(job)
    kv(job, SHOW_ROWS)
    if job["status"] == "failed":
        raise typer.Exit(1)


@finetune.command("cancel")
@handle_errors
def cancel(ctx: typer.Context, job_id: str, json: JsonOpt = False) -> None:
    """Cancel a queued or running fine-tuning job."""
    job = client(ctx).request("POST", f"/api/v1/finetuning/jobs/{job_id}/cancel")
    if json:
        return print_json(job)
    console.print(f"Job {job['id']}: {job['status']}" + (" (stopping)" if job["status"] == "running" else ""))


@finetune.command("delete-model")
@handle_errors
def delete_model(ctx: typer.Context, name: str,
                 yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
                 json: JsonOpt = False) -> None:
    """Delete a fine-tuned model: its deployments stop and its weights' keys are destroyed."""
    if not yes:
        typer.confirm(f"Delete fine-tuned model '{name}'? Its deployments stop and its weights are destroyed; "
                      "this cannot be undone.", abort=True)
    client(ctx).request("DELETE", f"/api/v1/finetuning/models/{name}", params={"confirm": "true"})
    if json:
        return print_json({"deleted": name})
    console.print(f"Deleted fine-tuned model {name}; its deployments stopped and its keys were destroyed.")
