"""Per-workspace caps on what one workspace may hold of the installation (SEC-M10): dedicated
instances (at create and at scale-up) and queued+running fine-tuning jobs. Each cap refuses the
request past it with 409 naming its setting, and accepts again once one is released; another
workspace keeps its own count. (Open model uploads: tests/catalog/test_catalog_limits.py.)

Deployments of `echo-tiny` run the echo runtime in real worker processes; fine-tuning jobs stay
queued (this server runs none), which is what the job cap counts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ECHO_MODEL, Server, lean_server
from tests.support.tenants import Tenant, import_tiny_gguf, make_tenant, ok

INSTANCES = 2
JOBS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory, MODELPORT_MAX_DEDICATED_INSTANCES_PER_WORKSPACE=str(INSTANCES),
                           MODELPORT_MAX_ACTIVE_FINETUNE_JOBS_PER_WORKSPACE=str(JOBS))


def tenant_with_echo_model(server: Server, tmp_path: Path) -> Tenant:
    t = make_tenant(server)
    with server.client(t.keys["contributor"]) as c:
        import_tiny_gguf(c, tmp_path, name=ECHO_MODEL)
    return t


def deploy(server: Server, key: str, name: str, **fields: object):  # type: ignore[no-untyped-def]
    with server.client(key) as c:
        return c.post("/api/v1/deployments", json={"name": name, "model": ECHO_MODEL, **fields})


def test_dedicated_instances_are_capped_per_workspace(server: Server, tmp_path: Path):
    one = tenant_with_echo_model(server, tmp_path / "one")
    key = one.keys["contributor"]
    ok(deploy(server, key, "a", type="dedicated", instances=1), 201)
    r = deploy(server, key, "b", type="dedicated", instances=2)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["field"] == "instances" and "MODELPORT_MAX_DEDICATED_INSTANCES_PER_WORKSPACE" in err["message"]
    assert err["details"] == {"limit": "max_dedicated_instances_per_workspace", "current": 1, "max": INSTANCES}
    ok(deploy(server, key, "b", type="dedicated", instances=1), 201)  # exactly at the cap
    with server.client(key) as c:
        r = c.patch("/api/v1/deployments/a", json={"instances": 2})  # scaling up past it
        assert r.status_code == 409 and r.json()["error"]["details"]["limit"] == "max_dedicated_instances_per_workspace"
        ok(c.patch("/api/v1/deployments/a", json={"instances": 1}))  # not an increase
        ok(deploy(server, key, "shared", type="serverless"), 201)  # serverless pools are not dedicated instances
        assert deploy(server, key, "c", type="dedicated").status_code == 409
        ok(c.delete("/api/v1/deployments/b"), (202, 204))  # released
    ok(deploy(server, key, "c", type="dedicated", instances=1), 201)
    other = tenant_with_echo_model(server, tmp_path / "other")  # its own count
    ok(deploy(server, other.keys["contributor"], "a", type="dedicated", instances=INSTANCES), 201)


def test_concurrent_creates_cannot_pass_the_cap_together(server: Server, tmp_path: Path):
    t = tenant_with_echo_model(server, tmp_path / "race")
    results: list[int] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        r = deploy(server, t.keys["contributor"], f"race-{i}", type="dedicated", instances=1)
        with lock:
            results.append(r.status_code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert sorted(results) == [201] * INSTANCES + [409] * (6 - INSTANCES), results


def test_active_finetune_jobs_are_capped_per_workspace(server: Server):
    t = make_tenant(server)
    row = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    with server.client(t.keys["contributor"]) as c:
        ok(c.post("/api/v1/datasets", params={"name": "tiny"}, content=(row + "\n").encode(),
                  headers={"Content-Type": "application/jsonl"}), 201)
        body = {"model": "SmolLM2-135M-Instruct", "dataset": "tiny"}
        jobs = [ok(c.post("/api/v1/finetuning/jobs", json=body), 201).json()["id"] for _ in range(JOBS)]
        r = c.post("/api/v1/finetuning/jobs", json=body)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert "MODELPORT_MAX_ACTIVE_FINETUNE_JOBS_PER_WORKSPACE" in err["message"]
        assert err["details"] == {"limit": "max_active_finetune_jobs_per_workspace", "current": JOBS, "max": JOBS}
        ok(c.post(f"/api/v1/finetuning/jobs/{jobs[0]}/cancel"))  # released
        ok(c.post("/api/v1/finetuning/jobs", json=body), 201)
