"""The routing table and pool provisioning read the database off the event loop.

Real services (`build_services` on PostgreSQL), a real echo worker, and a slow database made
deterministic: another session holds an ACCESS EXCLUSIVE lock on `deployments`
(tests/support/pg.py `TableLock`). A refresh of the routing table and the start of a stopped
pool wait for it on worker threads while the event loop goes on; once the lock goes, both finish
with what the rows say. When those queries ran on the event loop, the loop stopped with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.api.deps import Services
from modelport.deployments.schemas import DeploymentCreate
from modelport.identity.principal import Principal
from modelport.offload import run_blocking
from tests.support import pg
from tests.support.inference import CHAT_MODEL
from tests.support.installation import installation_at
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.postgres


@pytest.fixture
def installation(tmp_path: Path, postgres_admin_url: str | None) -> Iterator[tuple[Services, Principal, str]]:
    if postgres_admin_url is None:
        pytest.skip("PostgreSQL not available: set MODELPORT_TEST_DATABASE_URL or install the server binaries")
    url = pg.create_database(postgres_admin_url)
    try:
        with installation_at(tmp_path / "home", url) as (svc, admin):
            yield svc, admin, url
    finally:
        pg.drop_database(postgres_admin_url, url)


def test_refresh_and_pool_start_wait_for_a_slow_database_off_the_loop(installation) -> None:
    svc, admin, url = installation
    gateway = svc.gateway

    async def scenario() -> None:
        row = svc.deployments.create(admin, DeploymentCreate(name="a", model=CHAT_MODEL, type="serverless")).row
        await gateway.routes.load()
        route = gateway.by_name[(admin.workspace_id, "a")]
        assert route.state == "creating" and gateway.pools.pools.get(route.pool_key) is None
        with pg.TableLock(url, "deployments") as lock:
            refresh = asyncio.create_task(gateway.routes.refresh(row.id))
            pool = asyncio.create_task(gateway.pool_for(route))  # stopped: it starts on demand

            async def both_wait() -> bool:
                return await run_blocking(pg.lock_waiters, url) >= 2

            await wait_until_async(both_wait, 60, 0.02, "the refresh and the pool start to wait for the lock")
            # This loop ran meanwhile: neither query held it.
            assert not lock.released.is_set() and not refresh.done() and not pool.done()
        assert (await refresh).id == row.id
        started = await pool
        assert started.key == route.pool_key and started.members
        await gateway.shutdown()

    asyncio.run(scenario())

