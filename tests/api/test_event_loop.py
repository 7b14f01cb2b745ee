"""The event loop keeps serving while blocking work waits.

A real `modelport serve` on PostgreSQL, and a slow database made deterministic: another session
of the test holds an ACCESS EXCLUSIVE lock on one table (tests/support/pg.py `TableLock`), so
that the server's query of it waits for as long as the test wants. While it waits, `/healthz`
must answer. When such a query ran on the event loop (authentication of an API key that is not
in the cache, the audit record of a refused write), every other request of the server waited
with it, `/healthz` included, until the lock went.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from modelport.identity import secrets as keysecrets
from tests.support import pg
from tests.support.server import ECHO_MODEL, Server, lean_env, loopback_get, start_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres

#: How long /healthz may take: a deadline for a loaded machine, far below the lock's longest hold.
HEALTH_DEADLINE = 30.0


@pytest.fixture(scope="module")
def server(postgres_admin_url: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    if postgres_admin_url is None:
        pytest.skip("PostgreSQL not available: set MODELPORT_TEST_DATABASE_URL or install the server binaries")
    url = pg.create_database(postgres_admin_url)
    home: Path = tmp_path_factory.mktemp("srv") / "home"
    s = start_server(home, env_extra=lean_env({ECHO_MODEL: "echo"}, MODELPORT_DATABASE_URL=url,
                                              MODELPORT_FINETUNE_CONCURRENCY="0"))
    try:
        yield s, url
    finally:
        s.stop()
        pg.drop_database(postgres_admin_url, url)


def healthy_while_waiting(srv: Server, url: str, lock: pg.TableLock) -> None:
    """Once the server's query waits for the lock, /healthz answers before the lock goes."""
    wait_until(lambda: pg.lock_waiters(url) >= 1, 60, 0.05, "the server's query to wait for the lock")
    try:
        r = loopback_get(f"{srv.url}/healthz", timeout=HEALTH_DEADLINE)
    except httpx.TimeoutException:
        pytest.fail("/healthz did not answer while a database query waited: the event loop waited with it")
    assert r.status_code == 200
    assert not lock.released.is_set(), "/healthz answered only once the lock was gone"


def test_an_api_key_looked_up_in_a_slow_database_does_not_stall_the_server(server) -> None:
    srv, url = server
    _, unknown = keysecrets.generate("mpk")  # well formed, in no cache and no row: a database lookup
    with pg.TableLock(url, "api_keys") as lock, ThreadPoolExecutor(1) as pool:
        call = pool.submit(httpx.post, f"{srv.url}/v1/chat/completions", timeout=120,
                           headers={"Authorization": f"Bearer {unknown}"},
                           json={"model": "any", "messages": [{"role": "user", "content": "hi"}]})
        healthy_while_waiting(srv, url, lock)
        lock.release()
        refused = call.result(timeout=120)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_the_audit_record_of_a_refused_write_does_not_stall_the_server(server) -> None:
    srv, url = server
    with srv.client() as admin:
        admin.get("/api/v1/deployments").raise_for_status()  # the admin key is in the cache now
        with pg.TableLock(url, "audit_events") as lock:
            # Answered at once (404); its audit record, written after the answer, waits for the lock.
            assert admin.delete("/api/v1/deployments/no-such-deployment").status_code == 404
            healthy_while_waiting(srv, url, lock)
        wait_until(lambda: [e for e in admin.get("/api/v1/audit", params={"action": "deployment.delete"}).json()
                            if e["outcome"] == "denied"], 60, 0.1, "the refusal's audit record")
