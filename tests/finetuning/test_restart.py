"""A job running when the server stops is never left `running`: after a crash (SIGKILL of the
server) the next start puts it back in the queue and runs it again, and its trainer process
does not outlive the server that started it. Real server, real trainer process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.support.processes import trainer_pids
from tests.support.server import start_server
from tests.support.tenants import ok
from tests.support.waiting import wait_until

pytestmark = pytest.mark.training  # a training job, crashed and requeued

ENV = {"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "MODELPORT_FINETUNE_THREADS": "1"}


def test_a_crash_requeues_the_running_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rows = b"".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}"}]}).encode() + b"\n"
                    for i in range(8))
    server = start_server(home, env_extra=ENV)
    try:
        with server.client() as c:
            ok(c.post("/api/v1/datasets", params={"name": "d"}, content=rows), 201)
            job = ok(c.post("/api/v1/finetuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "d",
                                                             "epochs": 50}), 201).json()
            wait_until(lambda: ok(c.get(f"/api/v1/finetuning/jobs/{job['id']}")).json()["status"] == "running",
                       300, 0.5, "the job to start")
            first_start = ok(c.get(f"/api/v1/finetuning/jobs/{job['id']}")).json()["started_at"]
        server.proc.send_signal(signal.SIGKILL)  # a crash: no shutdown code runs
        server.proc.wait(30)
        wait_until(lambda: not trainer_pids(), 60, 0.5, "the orphaned trainer to exit")
    finally:
        server.stop()

    server = start_server(home, env_extra=ENV)
    try:
        with server.client() as c:
            def requeued() -> bool:
                j = ok(c.get(f"/api/v1/finetuning/jobs/{job['id']}")).json()
                return j["status"] == "queued" or (j["status"] == "running" and j["started_at"] != first_start)
            wait_until(requeued, 120, 0.5, "the interrupted job to be requeued")
            ok(c.post(f"/api/v1/finetuning/jobs/{job['id']}/cancel"))
            wait_until(lambda: ok(c.get(f"/api/v1/finetuning/jobs/{job['id']}")).json()["status"] == "cancelled",
                       120, 0.5, "the job to be cancelled")
        wait_until(lambda: not trainer_pids(), 60, 0.5, "the trainer to stop after the cancel")
    finally:
        server.stop()
    assert os.path.exists(home / "admin.key")
