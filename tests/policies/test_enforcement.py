"""`policies compliance --enforce` beside the other suspension reasons, on real services
(`build_services` on a temporary home, SQLite and PostgreSQL) with real echo workers: the policy
adds its own reason and clears only that one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.api.deps import Services
from modelport.db.tables import Deployment
from modelport.deployments.schemas import DeploymentCreate, NetworkSettings
from modelport.errors import PolicyDenied, ServiceUnavailable
from modelport.identity.principal import Principal
from modelport.inference.calls import check_ready
from modelport.policies import enforcement
from modelport.policies.schemas import PolicyPut
from tests.support.inference import CHAT_MODEL
from tests.support.installation import installation_at

NO_PUBLIC = ('forbid(principal, action in [Action::"deploy", Action::"update_deployment"], resource) '
             'when { resource.public_network_access };')


@pytest.fixture
def installation(tmp_path: Path, db_url: str) -> Iterator[tuple[Services, Principal]]:
    with installation_at(tmp_path / "home", db_url) as installed:
        yield installed


def reasons(svc: Services, dep_id: str) -> tuple[str, dict]:
    with svc.db.session() as s:
        row = s.get_one(Deployment, dep_id)
        return row.state, dict(row.suspensions)


def test_enforce_adds_and_clears_only_the_policy_reason(installation) -> None:
    svc, admin = installation
    m, life = svc.gateway, svc.lifecycle

    async def scenario() -> None:
        public = svc.deployments.create(admin, DeploymentCreate(name="pub", model=CHAT_MODEL)).row
        private = svc.deployments.create(admin, DeploymentCreate(
            name="priv", model=CHAT_MODEL, network=NetworkSettings(public_access=False,
                                                                  allowed_ranges=["10.0.0.0/8"]))).row
        await m.routes.load()
        await asyncio.gather(m.provisioner.provision(public.id), m.provisioner.provision(private.id))
        await life.suspend(public.id, "subscription", "The subscription to this offer was cancelled.")

        svc.policies.put(admin, "no-public", PolicyPut(cedar=NO_PUBLIC, scope="platform"))
        with pytest.raises(PolicyDenied):  # the next deploy is refused
            svc.deployments.create(admin, DeploymentCreate(name="pub2", model=CHAT_MODEL))
        _, found, suspended, resumed = await enforcement.enforce(svc.policies, life, admin, True)
        assert suspended == [public.id] and resumed == [] and [v.id for v in found] == [public.id]
        state, held = reasons(svc, public.id)
        assert state == "suspended" and set(held) == {"subscription", "policy"} and "no-public" in held["policy"]
        with pytest.raises(ServiceUnavailable) as refused:
            check_ready(m.by_name[(public.workspace_id, "pub")])
        assert "no-public" in refused.value.message and "subscription" in refused.value.message
        check_ready(m.by_name[(private.workspace_id, "priv")])  # complies: untouched

        svc.policies.delete(admin, "no-public", "platform")
        _, _, suspended, resumed = await enforcement.enforce(svc.policies, life, admin, True)
        assert suspended == [] and resumed == [public.id]
        state, held = reasons(svc, public.id)
        assert state == "suspended" and set(held) == {"subscription"}  # the other cause still holds
        await life.resume(public.id, "subscription")
        await m.wait_idle()
        assert reasons(svc, public.id) == ("succeeded", {})
        await m.shutdown()

    asyncio.run(scenario())
