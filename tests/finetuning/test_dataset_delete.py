"""Deleting a dataset stops the fine-tuning jobs that read it (SEC-M9).

Before, a job kept training on a dataset deleted under it (the trainer had already received the
plaintext) and registered a model trained on data its owner had destroyed. Now deleting a
dataset cancels the queued jobs that name it (as training or validation data) at once, asks the
running ones to stop (the trainer is killed within a poll interval), and a job whose dataset is
gone or whose cancellation was requested never registers a model: its adapter is shredded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from modelport.catalog.service import CatalogService
from modelport.catalog.storage import LocalModelStore
from modelport.datasets.service import DatasetService
from modelport.datastore import Datastore
from modelport.db import migrate
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Dataset, FinetuneJob
from modelport.finetuning.cancel import JobCancelled
from modelport.finetuning.schemas import JobCreate
from modelport.finetuning.service import FinetuningService
from modelport.identity.principal import Principal
from modelport.identity.service import IdentityService
from tests.support.processes import trainers_of
from tests.support.server import Server, start_server
from tests.support.tenants import ok
from tests.support.waiting import wait_until

BASE = "SmolLM2-135M-Instruct"


def rows(n: int, tag: str) -> bytes:
    return b"".join(json.dumps({"messages": [{"role": "user", "content": f"{tag} question {i}"},
                                             {"role": "assistant", "content": f"{tag} answer {i}"}]}).encode()
                    + b"\n" for i in range(n))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("ftdel") / "home",
                     env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "MODELPORT_FINETUNE_THREADS": "1"})
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.training  # a real trainer loads the real model
def test_deleting_a_dataset_cancels_the_jobs_that_read_it(server: Server) -> None:
    with server.client() as c:
        for name in ("d", "e"):
            ok(c.post("/api/v1/datasets", params={"name": name}, content=rows(8, name)), 201)
        running = ok(c.post("/api/v1/finetuning/jobs", json={"model": BASE, "dataset": "d", "epochs": 100,
                                                             "batch_size": 1, "suffix": "never"}), 201).json()
        # Only one job runs at a time: this one waits in the queue, reading `d` as validation data.
        queued = ok(c.post("/api/v1/finetuning/jobs", json={"model": BASE, "dataset": "e",
                                                            "validation_dataset": "d", "suffix": "never2"}),
                    201).json()
        bystander = ok(c.post("/api/v1/finetuning/jobs", json={"model": BASE, "dataset": "e"}), 201).json()
        wait_until(lambda: ok(c.get(f"/api/v1/finetuning/jobs/{running['id']}")).json()["status"] == "running"
                 and trainers_of(server), 300, 0.5, "the trainer to start")
        trainers = trainers_of(server)

        ok(c.delete("/api/v1/datasets/d"), 204)

        cancelled = ok(c.get(f"/api/v1/finetuning/jobs/{queued['id']}")).json()
        assert cancelled["status"] == "cancelled", cancelled  # at once: it never started
        assert "dataset" in cancelled["error"] and "deleted" in cancelled["error"], cancelled
        wait_until(lambda: ok(c.get(f"/api/v1/finetuning/jobs/{running['id']}")).json()["status"]
                 not in ("queued", "running"), 120, 0.5, "the running job to stop")
        stopped = ok(c.get(f"/api/v1/finetuning/jobs/{running['id']}")).json()
        assert stopped["status"] == "cancelled" and stopped["fine_tuned_model"] is None, stopped
        assert "deleted" in stopped["error"], stopped
        assert stopped["step"] < 100 * 8, stopped  # 100 epochs of 8 one-row batches: stopped long before
        wait_until(lambda: not set(trainers_of(server)) & set(trainers), 60, 0.5, "the trainer to exit")
        models = ok(c.get("/api/v1/models", params={"owner": "workspace"})).json()["data"]
        assert [m["name"] for m in models if "never" in m["name"]] == []
        # A job on another dataset is not touched (it runs once the queue frees up).
        assert ok(c.get(f"/api/v1/finetuning/jobs/{bystander['id']}")).json()["status"] in ("queued", "running")
        ok(c.post(f"/api/v1/finetuning/jobs/{bystander['id']}/cancel"))


@dataclass
class Services:
    admin: Principal
    db: Database
    store: Datastore
    datasets: DatasetService
    ft: FinetuningService


@pytest.fixture
def svc(db_url: str, tmp_path: Path) -> Iterator[Services]:
    db = Database(db_url)
    migrate.upgrade(db.engine)
    identity = IdentityService(db)
    secret = identity.bootstrap()
    assert secret is not None
    catalog = CatalogService(db, LocalModelStore(tmp_path / "blobs"), max_upload_bytes=1 << 30,
                             upload_ttl_seconds=3600)
    assert catalog.register_bundled() == []
    store = Datastore.create(tmp_path / "datastore", platform_master_key=b"p" * 32, workspace_master_key=b"w" * 32)
    datasets = DatasetService(db, store, 1 << 20)
    try:
        yield Services(identity.authenticate(secret), db, store, datasets,
                       FinetuningService(db, catalog, datasets, store))
    finally:
        db.dispose()


def _claimed_job(svc: Services, dataset: str) -> FinetuneJob:
    svc.datasets.upload(svc.admin, dataset, None, iter([rows(4, dataset)]))
    job = svc.ft.create(svc.admin, JobCreate(model=BASE, dataset=dataset))
    claimed = svc.ft.claim_next()
    assert claimed is not None and claimed.id == job.id and claimed.status == "running"
    return claimed


def _finetuned(svc: Services) -> list[str]:
    with svc.db.session() as s:
        return list(s.scalars(select(CatalogModel.id).where(CatalogModel.source == "finetuned")))


def _adapters(svc: Services, ws: str) -> list[str]:
    """Objects of the datastore that are not datasets: adapters (stored under the model's id)."""
    return [o.object_id for o in svc.store.list_objects(ws) if not o.object_id.startswith("ds_")]


def test_a_job_whose_dataset_is_gone_registers_no_model(svc: Services) -> None:
    """The runner's last step, `register`, on a real store: refused once the dataset was deleted
    (the normal path cancels the job; the second case removes only the row, as a server that
    predates the cancellation would, to check the dataset guard on its own), accepted otherwise.
    A refused adapter is shredded, never kept."""
    ws = svc.admin.workspace_id
    job = _claimed_job(svc, "d")
    svc.datasets.delete(svc.admin, "d")
    with pytest.raises(JobCancelled, match="deleted"):
        svc.ft.register(job, b"adapter trained on deleted data")
    assert _finetuned(svc) == [] and _adapters(svc, ws) == []

    job = _claimed_job(svc, "e")
    with svc.db.session() as s:
        s.execute(delete(Dataset).where(Dataset.name == "e"))
    with pytest.raises(JobCancelled, match="deleted"):
        svc.ft.register(job, b"adapter trained on deleted data")
    assert _finetuned(svc) == [] and _adapters(svc, ws) == []

    job = _claimed_job(svc, "kept")
    model_id = svc.ft.register(job, b"adapter of a job whose data is still there")
    assert _finetuned(svc) == [model_id] and _adapters(svc, ws) == [model_id]
    svc.ft.finish(job.id, "succeeded", None, model_id)
    assert svc.ft.get(svc.admin, job.id).result_model_id == model_id


def test_the_cancellation_keeps_its_reason(svc: Services) -> None:
    job = _claimed_job(svc, "d")
    svc.datasets.delete(svc.admin, "d")
    svc.ft.finish(job.id, "cancelled")  # what the runner records once the trainer stopped
    out = svc.ft.out(svc.ft.get(svc.admin, job.id))
    assert out.status == "cancelled" and out.error is not None and "deleted" in out.error, out
