"""P5: a deployment's requests are processed only in regions of its geography, even on failure.

Two geographies with their own regions and worker slots; one deployment in each. Geography X's
worker is killed (SIGKILL) while both take traffic: X's callers get 503 until its worker is
back, Y's callers are unaffected, and Y's worker serves exactly Y's requests, never one of X's,
although it has free capacity the whole time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from tests.support.inference import CHAT_MODEL, chat, create_deployment, kill, workers
from tests.support.runtimes import SLOW
from tests.support.server import Server, start_lean
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("geo") / "home", {CHAT_MODEL: SLOW},
                   MODELPORT_GEOGRAPHIES=json.dumps({"x": ["x1"], "y": ["y1"]}),
                   MODELPORT_REGION_SLOTS=json.dumps({"x1": 2, "y1": 2}))
    try:
        yield s
    finally:
        s.stop()


def test_geography_is_shown_and_defaults_to_the_first(server: Server):
    d = create_deployment(server, "default-geo", CHAT_MODEL, wait=False)
    assert d["geography"] == "x"
    with server.client() as c:
        r = c.post("/api/v1/deployments", json={"name": "nowhere", "model": CHAT_MODEL, "geography": "local"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "geography"
        assert c.delete("/api/v1/deployments/default-geo").status_code == 204


def test_requests_never_leave_their_geography_when_its_workers_die(server: Server):
    kx = create_deployment(server, "in-x", CHAT_MODEL, geography="x")["keys"]["primary"]
    (x_worker,) = workers(server).values()
    ky = create_deployment(server, "in-y", CHAT_MODEL, geography="y")["keys"]["primary"]
    (y_worker,) = [w for i, w in workers(server).items() if i != x_worker.id]
    assert y_worker.health.requests_total == 0

    stop = threading.Event()
    killed = threading.Event()
    x_before: list[int] = []
    x_after: list[int] = []
    y_statuses: list[int] = []

    def x_caller() -> None:
        while not stop.is_set():
            was_killed = killed.is_set()
            status = chat(server, kx, None, "one two three four five", max_tokens=5).status_code
            (x_after if was_killed else x_before).append(status)
            if status == 503:  # back off as a client would: spinning would meet the deployment's rate limit
                stop.wait(0.05)

    def y_caller() -> None:
        while not stop.is_set():
            y_statuses.append(chat(server, ky, None, "alpha beta", max_tokens=2).status_code)

    threads = [threading.Thread(target=x_caller) for _ in range(3)] + [threading.Thread(target=y_caller)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: x_before.count(200) >= 2 and y_statuses, 60, what="traffic in both geographies")
        killed.set()
        kill(x_worker.health.pid)
        wait_until(lambda: 503 in x_after, 60, 0.05, "X's callers to get 503")
        wait_until(lambda: x_after.count(200) >= 3, 120, 0.05, "X's worker to be restarted and serve again")
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    assert set(x_before) <= {200, 503} and set(x_after) <= {200, 503}, (x_before, x_after)
    assert set(y_statuses) == {200}  # Y never noticed
    now = workers(server)
    # X's worker came back in X's own slot (same worker, new process)...
    assert now[x_worker.id].health.pid != x_worker.health.pid
    assert now[x_worker.id].health.requests_total >= 3
    # ...and Y's worker served Y's requests and nothing else, although it was free to take more.
    assert now[y_worker.id].health.pid == y_worker.health.pid
    assert now[y_worker.id].health.requests_total == len(y_statuses)
    assert set(now) == {x_worker.id, y_worker.id}
