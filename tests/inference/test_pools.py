"""Dedicated vs serverless (P6), the serverless idle stop, and fair admission, on real servers.

Workers are observed from outside: their run directory and their health (pid, request count)
over their socket. The models run on echo runtimes: these are properties of the plumbing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.inference import CHAT_MODEL, alive, chat, create_deployment, worker_pids_on_proc, workers
from tests.support.runtimes import SLOW
from tests.support.server import Server, start_lean
from tests.support.tenants import import_tiny_gguf, make_tenant
from tests.support.waiting import wait_until

SLOW_MODEL = "slow-echo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("pools") / "home", {CHAT_MODEL: "echo", SLOW_MODEL: SLOW})
    try:
        yield s
    finally:
        s.stop()


def requests_by_worker(server: Server) -> dict[str, int]:
    return {i: w.health.requests_total for i, w in workers(server).items()}


def test_dedicated_instances_run_in_processes_reserved_for_the_deployment(server: Server):
    shared = create_deployment(server, "shared-a", CHAT_MODEL)["keys"]["primary"]
    before = workers(server)
    dedicated = create_deployment(server, "dedicated", CHAT_MODEL, type="dedicated", instances=2)
    key = dedicated["keys"]["primary"]
    mine = {i: w for i, w in workers(server).items() if i not in before}
    assert len(mine) == 2
    pids = {w.health.pid for w in mine.values()}
    assert len(pids) == 2 and pids <= worker_pids_on_proc()
    counts = requests_by_worker(server)
    with ThreadPoolExecutor(4) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda _: chat(server, key, None), range(8)))
    assert all(chat(server, shared, None).status_code == 200 for _ in range(3))
    after = requests_by_worker(server)
    grew = {i: after[i] - counts[i] for i in after}
    assert sum(grew[i] for i in mine) == 8  # every dedicated request on the dedicated workers...
    assert sum(grew[i] for i in grew if i not in mine) == 3  # ...and no serverless one
    # scaling the dedicated deployment down stops one of its own processes
    with server.client() as admin:
        assert admin.patch("/api/v1/deployments/dedicated", json={"instances": 1}).status_code == 200
    wait_until(lambda: sum(alive(p) for p in pids) == 1, 30, what="one dedicated worker to stop")
    assert chat(server, key, None).status_code == 200


def test_serverless_deployments_of_a_catalog_model_share_the_pool_across_workspaces(server: Server):
    ws1, ws2 = make_tenant(server, roles=("owner",)), make_tenant(server, roles=("owner",))
    k1 = create_deployment(server, "mine", CHAT_MODEL, key=ws1.keys["owner"])["keys"]["primary"]
    before = requests_by_worker(server)
    k2 = create_deployment(server, "mine", CHAT_MODEL, key=ws2.keys["owner"])["keys"]["primary"]
    assert set(workers(server)) == set(before)  # joined the running pool: no new process
    assert chat(server, k1, "mine").status_code == 200
    assert chat(server, k2, "mine").status_code == 200
    after = requests_by_worker(server)
    served = [i for i in after if after[i] > before.get(i, 0)]
    assert len(served) == 1 and after[served[0]] - before[served[0]] == 2  # one process served both


def test_fair_round_robin_between_deployments_of_one_pool(server: Server, tmp_path: Path):
    """One worker taking one request at a time; A floods 12 requests, then B sends 2: B is served
    in turn with A, so most of A's requests finish after B's, not before."""
    with server.client() as admin:
        import_tiny_gguf(admin, tmp_path, name=SLOW_MODEL)
    a = create_deployment(server, "flood-a", SLOW_MODEL)["keys"]["primary"]
    b = create_deployment(server, "polite-b", SLOW_MODEL)["keys"]["primary"]
    finished: list[str] = []
    lock = threading.Lock()

    def call(who: str, key: str) -> int:
        r = chat(server, key, None, "one two three four five", max_tokens=5)  # 5 tokens, 0.2 s
        with lock:
            finished.append(who)
        return r.status_code

    with ThreadPoolExecutor(14) as pool:
        flood = [pool.submit(call, "A", a) for _ in range(12)]
        wait_until(lambda: finished, 60, 0.01, "A's first request to finish")  # A's are queued by now
        polite = [pool.submit(call, "B", b) for _ in range(2)]
        statuses = [f.result() for f in flood + polite]
    assert statuses == [200] * 14
    after_b = len(finished) - 1 - finished[::-1].index("B")  # A requests finishing after B's last
    assert finished.count("A") == 12 and after_b >= 5, finished


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("idle") / "home", {CHAT_MODEL: "echo"},
                   MODELPORT_SERVERLESS_IDLE_SECONDS="3")
    try:
        yield s
    finally:
        s.stop()


def test_idle_serverless_pool_stops_and_starts_again_on_demand(idle_server: Server):
    s = idle_server
    dedicated = create_deployment(s, "always-on", CHAT_MODEL, type="dedicated")["keys"]["primary"]
    (ded_worker,) = workers(s).values()
    key = create_deployment(s, "on-demand", CHAT_MODEL)["keys"]["primary"]
    assert chat(s, key, None).status_code == 200
    (first,) = [w for i, w in workers(s).items() if i != ded_worker.id]
    wait_until(lambda: not alive(first.health.pid) and not first.socket.parent.exists(), 60, 0.2,
               "the idle serverless worker to stop and its directory to go")
    time.sleep(0.5)
    assert alive(ded_worker.health.pid)  # dedicated workers are never stopped for idleness
    r = chat(s, key, None, "welcome back")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "welcome back"
    (second,) = [w for i, w in workers(s).items() if i != ded_worker.id]
    assert second.health.pid != first.health.pid and second.health.requests_total == 1
    assert chat(s, dedicated, None).status_code == 200
    with s.client() as c:  # stopping for idleness is not a state change of the deployment
        states = {m["id"]: m["state"] for m in c.get("/v1/models").json()["data"]}
    assert states == {"always-on": "succeeded", "on-demand": "succeeded"}
