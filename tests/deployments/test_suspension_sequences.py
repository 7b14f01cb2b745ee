"""Random sequences of suspensions and resumptions, through the lifecycle service, keep the two
planes in agreement.

Two serverless deployments share one pool; a dedicated one has its own. Each step adds or clears
one reason of one deployment (the way a cancelled subscription, an enforced policy or a disabled
key does). After each step, once the workers the step started are up: the row's reasons are
exactly those added and not cleared since, the deployment is `suspended` exactly when one is
left (`succeeded` otherwise), its route says the same as its row, and a pool has workers exactly
when a deployment it serves is not suspended. Real services on SQLite, real echo workers.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from modelport.db.tables import Deployment
from modelport.deployments.schemas import DeploymentCreate
from modelport.deployments.suspension import REASONS
from tests.support.inference import CHAT_MODEL
from tests.support.installation import installation_at
from tests.support.workers import LoopThread

NAMES = ("a", "b", "d")  # a and b share a serverless pool; d is dedicated


class SuspensionMachine(RuleBasedStateMachine):
    def __init__(self, home: Path) -> None:
        super().__init__()
        self.loop = LoopThread()
        self._installed = installation_at(home, f"sqlite:///{home.parent / 'store.db'}")
        self.svc, admin = self._installed.__enter__()
        self.ws = admin.workspace_id
        self.reasons: dict[str, set[str]] = {n: set() for n in NAMES}
        life = self.svc.lifecycle

        async def setup() -> dict[str, str]:
            await life.start_existing()
            ids = {}
            for n in NAMES:
                created, _ = await life.create(admin, DeploymentCreate(
                    name=n, model=CHAT_MODEL, type="dedicated" if n == "d" else "serverless"))
                ids[n] = created.row.id
            await self.svc.gateway.wait_idle()
            return ids

        self.ids = self.loop.run(setup(), timeout=180)

    @rule(name=st.sampled_from(NAMES), reason=st.sampled_from(REASONS))
    def suspend(self, name: str, reason: str) -> None:
        self.loop.run(self.svc.lifecycle.suspend(self.ids[name], reason, f"{reason} holds"))
        self.reasons[name].add(reason)

    @rule(name=st.sampled_from(NAMES), reason=st.sampled_from(REASONS))
    def resume(self, name: str, reason: str) -> None:
        self.loop.run(self.svc.lifecycle.resume(self.ids[name], reason))
        self.reasons[name].discard(reason)

    @invariant()
    def planes_agree(self) -> None:
        gateway = self.svc.gateway
        self.loop.run(gateway.wait_idle(), timeout=180)
        with self.svc.db.session() as s:
            rows = {n: s.get_one(Deployment, self.ids[n]) for n in NAMES}
            for n, row in rows.items():
                assert set(row.suspensions or {}) == self.reasons[n]
                assert row.state == ("suspended" if self.reasons[n] else "succeeded"), (n, row.state_reason)
                route = gateway.by_name[(self.ws, n)]
                assert (route.state, route.state_reason) == (row.state, row.state_reason)
        for names in (("a", "b"), ("d",)):
            pool = gateway.pools.pools.get(gateway.by_name[(self.ws, names[0])].pool_key)
            running = pool is not None and not pool.closed and bool(pool.members)
            assert running == any(not self.reasons[n] for n in names), (names, self.reasons)

    def teardown(self) -> None:
        try:
            self.loop.run(self.svc.gateway.shutdown(), timeout=120)
        finally:
            self._installed.__exit__(None, None, None)
            self.loop.close()


def test_suspension_sequences_keep_both_planes_in_agreement(tmp_path: Path) -> None:
    runs = iter(range(1000))
    run_state_machine_as_test(lambda: SuspensionMachine(tmp_path / f"run{next(runs)}" / "home"),
                              settings=settings(max_examples=4, stateful_step_count=10, deadline=None,
                                                suppress_health_check=list(HealthCheck)))
