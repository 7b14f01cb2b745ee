"""The deployment lifecycle service: a change refused in the control plane changes nothing in
the data plane either, and an allowed one reaches both.

Real services (`build_services` on a temporary home, SQLite and PostgreSQL), real echo workers;
the callers are real principals of real API keys (a reader, a contributor, another workspace).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from modelport.api.deps import Services
from modelport.db.tables import Deployment
from modelport.deployments.schemas import DeploymentCreate, DeploymentUpdate
from modelport.errors import Forbidden, NotFound
from modelport.identity.principal import Principal
from modelport.identity.roles import Role
from modelport.safety.config import ContentFilterConfig
from tests.support.inference import CHAT_MODEL
from tests.support.installation import installation_at


@pytest.fixture
def installation(tmp_path: Path, db_url: str) -> Iterator[tuple[Services, Principal]]:
    with installation_at(tmp_path / "home", db_url) as installed:
        yield installed


def member(svc: Services, admin: Principal, name: str, role: Role, workspace: str = "default") -> Principal:
    """A new user with `role` in `workspace`, as its own API key authenticates it."""
    svc.identity.create_user(admin, name)
    svc.identity.add_member(admin, name, role, workspace=workspace)
    return svc.identity.authenticate(svc.identity.create_api_key_for_user(admin, name, workspace).secret)


def rows(svc: Services) -> dict[str, tuple[str, int]]:
    with svc.db.session() as s:
        return {d.name: (d.state, d.instances) for d in s.scalars(select(Deployment))}


def test_refused_changes_leave_both_planes_as_they_were(installation) -> None:
    svc, admin = installation
    life, gateway = svc.lifecycle, svc.gateway
    reader = member(svc, admin, "rita", Role.READER)
    contributor = member(svc, admin, "carl", Role.CONTRIBUTOR)
    svc.identity.create_workspace(admin, "other")
    stranger = member(svc, admin, "olga", Role.OWNER, workspace="other")

    async def scenario() -> None:
        await life.start_existing()
        created, _ = await life.create(admin, DeploymentCreate(name="d", model=CHAT_MODEL, type="dedicated"))
        await gateway.wait_idle()
        route = gateway.by_name[(admin.workspace_id, "d")]
        assert route.state == "succeeded" and gateway.pools.pools[route.pool_key].members
        before = (rows(svc), dict(gateway.by_key), sorted(gateway.pools.pools))

        refused = [
            life.create(reader, DeploymentCreate(name="r", model=CHAT_MODEL)),
            # a contributor may deploy, but not with the filter off: refused before anything is created
            life.create(contributor, DeploymentCreate(name="c", model=CHAT_MODEL), ContentFilterConfig(enabled=False)),
            life.update(reader, "d", DeploymentUpdate(instances=2)),
            life.delete(reader, "d"),
            life.regenerate_key(reader, "d", "primary"),
            life.set_content_filter(contributor, "d", ContentFilterConfig(enabled=False)),
        ]
        for call in refused:
            with pytest.raises(Forbidden):
                await call
        # another workspace's owner: the deployment does not exist for it
        for call in (life.get(stranger, "d"), life.delete(stranger, "d"), life.update(stranger, "d", DeploymentUpdate(
                instances=2)), life.regenerate_key(stranger, "d", "secondary"), life.usage(stranger, "d")):
            with pytest.raises(NotFound):
                await call
        await gateway.wait_idle()
        assert (rows(svc), dict(gateway.by_key), sorted(gateway.pools.pools)) == before
        assert gateway.pools.pools[route.pool_key].members  # still serving

        # allowed: both planes follow
        _, secret = await life.regenerate_key(admin, "d", "primary")
        new_route = gateway.by_name[(admin.workspace_id, "d")]
        assert created.primary != secret and route.primary_lookup not in gateway.by_key
        assert new_route.primary_lookup in gateway.by_key
        await life.delete(contributor, "d")
        assert (admin.workspace_id, "d") not in gateway.by_name and rows(svc) == {}
        assert gateway.pools.pools.get(route.pool_key) is None or gateway.pools.pools[route.pool_key].closed
        await gateway.shutdown()

    asyncio.run(scenario())
