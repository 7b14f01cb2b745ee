"""A deployment is suspended for a set of reasons, each cleared only by its own cause.

Its workspace key disabled, its marketplace subscription cancelled, a policy enforced against it:
each cause adds its reason, requests answer 503 with every reason's message, and the deployment
serves again (without a redeploy) only when the last reason is cleared. A serverless pool that
another deployment shares keeps serving it. Real services (`build_services` on a temporary home,
SQLite and PostgreSQL), real echo workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.api.deps import Services
from modelport.deployments import suspension
from modelport.deployments.schemas import DeploymentCreate
from modelport.errors import ServiceUnavailable
from modelport.identity.principal import Principal
from modelport.inference.calls import check_ready
from tests.support.inference import CHAT_MODEL
from tests.support.installation import installation_at


@pytest.fixture
def installation(tmp_path: Path, db_url: str) -> Iterator[tuple[Services, Principal]]:
    with installation_at(tmp_path / "home", db_url) as installed:
        yield installed


def state(svc: Services, name: str) -> tuple[str, str | None, dict]:
    route = next(r for r in svc.gateway.by_name.values() if r.name == name)
    with svc.db.session() as s:
        from modelport.db.tables import Deployment
        row = s.get(Deployment, route.id)
        assert (row.state, row.state_reason) == (route.state, route.state_reason)  # table and route agree
        return row.state, row.state_reason, dict(row.suspensions)


def test_reasons_are_a_set_and_each_cause_clears_only_its_own(installation) -> None:
    svc, admin = installation
    m, life = svc.gateway, svc.lifecycle

    async def scenario() -> None:
        a = svc.deployments.create(admin, DeploymentCreate(name="a", model=CHAT_MODEL, type="serverless")).row
        b = svc.deployments.create(admin, DeploymentCreate(name="b", model=CHAT_MODEL, type="serverless")).row
        d = svc.deployments.create(admin, DeploymentCreate(name="d", model=CHAT_MODEL, type="dedicated")).row
        await m.routes.load()
        await asyncio.gather(*(m.provisioner.provision(x.id) for x in (a, b, d)))
        assert [state(svc, n)[0] for n in "abd"] == ["succeeded"] * 3
        shared = m.by_name[(a.workspace_id, "a")].pool_key
        assert shared == m.by_name[(b.workspace_id, "b")].pool_key

        await life.suspend(a.id, "subscription", "The subscription to this offer was cancelled.")
        await life.suspend(a.id, "policy", "Policy no-public-network forbids it.")
        st, reason, reasons = state(svc, "a")
        assert st == "suspended" and set(reasons) == {"subscription", "policy"}
        assert reason == "The subscription to this offer was cancelled. Policy no-public-network forbids it."
        with pytest.raises(ServiceUnavailable) as refused:
            check_ready(m.by_name[(a.workspace_id, "a")])
        assert "subscription to this offer was cancelled" in refused.value.message
        assert "no-public-network" in refused.value.message
        # b shares the serverless pool: it keeps serving
        assert state(svc, "b")[0] == "succeeded" and not m.pools.pools[shared].closed
        check_ready(m.by_name[(b.workspace_id, "b")])

        await life.resume(a.id, "subscription")  # the policy still holds
        st, reason, reasons = state(svc, "a")
        assert (st, reason, reasons) == ("suspended", "Policy no-public-network forbids it.",
                                          {"policy": "Policy no-public-network forbids it."})
        await life.resume(a.id, "subscription")  # clearing a reason that is not there changes nothing
        assert state(svc, "a")[0] == "suspended"
        await life.resume(a.id, "policy")
        await m.wait_idle()
        assert state(svc, "a") == ("succeeded", None, {})

        # A dedicated deployment's own workers stop, and start again on resume
        dedicated = m.by_name[(d.workspace_id, "d")].pool_key
        await life.suspend(d.id, "key_disabled", "The workspace key is disabled.")
        assert m.pools.pools.get(dedicated) is None or m.pools.pools[dedicated].closed
        svc.deployments.set_state(d.id, "succeeded", None)  # a start that finished late does not end it
        assert state(svc, "d")[0] == "suspended"
        await life.resume(d.id, "key_disabled")
        await m.wait_idle()
        assert state(svc, "d") == ("succeeded", None, {})
        assert m.pools.pools[dedicated].members

        with pytest.raises(ValueError, match="unknown suspension reason"):
            await life.suspend(a.id, "whim", "no")
        await m.shutdown()

    asyncio.run(scenario())


def test_a_failed_deployment_keeps_its_state_and_remembers_the_reason() -> None:
    from modelport.db.tables import Deployment
    row = Deployment(state="failed", state_reason="could not start", suspensions={})
    assert suspension.add(row, "policy", "forbidden") is False  # nothing was serving
    assert (row.state, row.state_reason, row.suspensions) == ("failed", "could not start", {"policy": "forbidden"})
    assert suspension.clear(row, "policy") is False and row.suspensions == {}
