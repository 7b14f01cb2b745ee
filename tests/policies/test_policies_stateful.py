"""Sequences of allowed calls never add up to what a policy forbids (hypothesis, real server).

The machine creates deployments, changes their network settings and content filters, and saves
or deletes a workspace policy forbidding public network access, in any order. Each answer must be
what the policy in force at that moment says, and at every step the compliance listing names
exactly the deployments that are public while the policy is in force: no path (create private,
then change something else, then open it) slips past the decision.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from tests.support.marketplace import publisher_record
from tests.support.server import ECHO_MODEL, Server, lean_server
from tests.support.tenants import Tenant, import_tiny_gguf, make_tenant, ok, unique

POLICY = ('forbid(principal, action in [Action::"deploy", Action::"update_deployment"], resource) '
          'when { resource.public_network_access };')
PRIVATE = {"public_access": False, "allowed_ranges": ["10.0.0.0/8"]}
PUBLIC = {"public_access": True, "allowed_ranges": []}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


@pytest.fixture(scope="module")
def echo_model(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Catalog-wide, so that every example's deployments share one serverless pool."""
    with server.client() as admin:
        publisher_record(admin, "tests")
        return import_tiny_gguf(admin, tmp_path_factory.mktemp("m"), ECHO_MODEL, scope="catalog",
                                publisher="tests")["name"]


def test_no_sequence_of_calls_gets_past_the_policy(server: Server, echo_model: str) -> None:
    class Machine(RuleBasedStateMachine):
        deployments = Bundle("deployments")

        @initialize(on=st.booleans())
        def tenant(self, on: bool) -> None:
            self.t: Tenant = make_tenant(server, unique("st"), roles=("owner", "contributor"))
            self.owner = server.client(self.t.keys["owner"])
            self.contributor = server.client(self.t.keys["contributor"])
            self.in_force = False
            self.public: dict[str, bool] = {}
            self.policy(on)

        def teardown(self) -> None:
            if hasattr(self, "owner"):
                self.owner.close()
                self.contributor.close()

        def _refused(self, r: httpx.Response) -> None:
            assert r.status_code == 403, r.text
            assert r.json()["error"]["details"]["policies"] == ["no-public"]

        @rule(on=st.booleans())
        def policy(self, on: bool) -> None:
            if on:
                ok(self.owner.put("/api/v1/policies/no-public", json={"cedar": POLICY}), (200, 201))
            elif self.in_force:
                ok(self.owner.delete("/api/v1/policies/no-public"), 204)
            self.in_force = on

        @rule(target=deployments, public=st.booleans())
        def create(self, public: bool):  # type: ignore[no-untyped-def]
            name = unique("d")
            r = self.contributor.post("/api/v1/deployments", json={"name": name, "model": ECHO_MODEL,
                                                                   "network": PUBLIC if public else PRIVATE})
            if public and self.in_force:
                self._refused(r)
                return multiple()
            ok(r, 201)
            self.public[name] = public
            return name

        @rule(dep=deployments, public=st.booleans())
        def network(self, dep: str, public: bool) -> None:
            r = self.contributor.patch(f"/api/v1/deployments/{dep}", json={"network": PUBLIC if public else PRIVATE})
            if public and self.in_force:
                self._refused(r)
            else:
                ok(r)
                self.public[dep] = public

        @rule(dep=deployments, enabled=st.booleans())
        def content_filter(self, dep: str, enabled: bool) -> None:
            """Not governed by this policy: allowed whatever the network settings."""
            ok(self.owner.put(f"/api/v1/deployments/{dep}/content-filter", json={"enabled": enabled}))

        @invariant()
        def compliance_matches(self) -> None:
            if not hasattr(self, "owner"):
                return
            items = ok(self.owner.get("/api/v1/policies/compliance")).json()["items"]
            flagged = {i["name"] for i in items if i["kind"] == "deployment"}
            expected = {d for d, pub in self.public.items() if pub} if self.in_force else set()
            assert flagged == expected

    Machine.TestCase.settings = settings(max_examples=10, stateful_step_count=12, deadline=None,
                                         suppress_health_check=list(HealthCheck))
    Machine.TestCase().runTest()
