"""Stateful property test: no sequence of legal calls serves (or bills) a sold model without a
usable subscription.

Hypothesis drives a workspace and a publisher through random sequences of subscribe,
unsubscribe, new terms, retiring old terms and calls, against a real server (echo runtime). The
deployment was created before the model was sold, so it starts suspended. Invariant after every
call: it answers 200 exactly when the workspace holds an active subscription whose accepted
terms are not retired, 503 otherwise; and the usage billed under the offer counts exactly the
calls that were answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.support.inference import create_deployment
from tests.support.marketplace import Publisher, create_offer, make_publisher
from tests.support.server import Server, loopback_client, start_lean
from tests.support.tenants import import_tiny_gguf, make_tenant, ok
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # each example sells a model of its own, served by the echo runtime (overrides go by name)
    s = start_lean(tmp_path_factory.mktemp("stateful") / "home", {f"sold-{i}": "echo" for i in range(1, MODELS + 1)})
    try:
        yield s
    finally:
        s.stop()


MODELS = 60


class Subscriptions(RuleBasedStateMachine):
    server: Server
    tmp: Path
    counter = 0

    @initialize()
    def setup(self) -> None:
        s = self.server
        Subscriptions.counter += 1
        assert Subscriptions.counter <= MODELS, "more examples than models with an echo runtime"
        self.pub: Publisher = make_publisher(s)
        with s.client() as admin:
            self.model = import_tiny_gguf(admin, self.tmp, f"sold-{Subscriptions.counter}", scope="catalog",
                                          publisher=self.pub.name)["name"]
        self.tenant = make_tenant(s)
        self.owner = self.tenant.keys["owner"]
        dep = create_deployment(s, "d", self.model, key=self.owner, type="serverless")
        self.dep_key = dep["keys"]["primary"]
        self.offer = create_offer(s, self.pub.key, self.model)  # sold after it was deployed
        self.versions = [1]  # published, oldest first
        self.retired: set[int] = set()
        self.accepted: int | None = None  # the version of the active subscription, if any
        self.has_row = False  # a subscription (active or cancelled) exists
        self.served = 0

    def usable(self) -> bool:
        return self.accepted is not None and self.accepted not in self.retired

    def current(self) -> int:
        return self.versions[-1]

    @rule()
    def subscribe(self) -> None:
        with self.server.client(self.owner) as c:
            sha = ok(c.get(f"/api/v1/marketplace/offers/{self.offer['id']}")).json()["terms"]["sha256"]
            ok(c.post("/api/v1/marketplace/subscriptions", json={
                "offer": self.offer["id"], "contact": {"name": "S", "email": "s@example.org"},
                "accept_terms_sha256": sha, "consent_to_share_contact": True}), 201)
        self.accepted = self.current()
        self.has_row = True

    @rule()
    def unsubscribe(self) -> None:
        with self.server.client(self.owner) as c:
            r = c.delete(f"/api/v1/marketplace/subscriptions/{self.offer['id']}")
        assert r.status_code == (200 if self.has_row else 404), r.text
        self.accepted = None

    @rule()
    def new_terms(self) -> None:
        v = self.current() + 1
        with self.server.client(self.pub.key) as c:
            ok(c.post(f"/api/v1/marketplace/offers/{self.offer['id']}/terms", json={"version": str(v),
                                                                                   "text": f"terms {v}"}), 201)
        self.versions.append(v)

    @rule()
    def retire_oldest(self) -> None:
        old = [v for v in self.versions[:-1] if v not in self.retired]
        if not old:
            return
        with self.server.client(self.pub.key) as c:
            ok(c.post(f"/api/v1/marketplace/offers/{self.offer['id']}/terms/{old[0]}/retire"))
        self.retired.add(old[0])

    @rule()
    def call(self) -> None:
        with loopback_client(base_url=self.server.url, headers={"Authorization": f"Bearer {self.dep_key}"},
                          timeout=60) as c:
            def answer() -> int:
                return c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a b"}],
                                                            "max_tokens": 2}).status_code
            if self.usable():
                wait_until(lambda: answer() == 200, 60, 0.1, "the resumed deployment to answer")
                self.served += 1
            else:
                assert answer() == 503

    @invariant()
    def billed_only_what_was_served(self) -> None:
        if not hasattr(self, "tenant"):
            return
        with self.server.client(self.owner) as c:
            rows = ok(c.get("/api/v1/usage", params={"group_by": "offer"})).json()["rows"]
        billed = sum(r["requests"] for r in rows if r["group"] == self.offer["id"])
        assert billed == self.served


def test_no_sequence_serves_a_sold_model_without_a_usable_subscription(server: Server, tmp_path: Path) -> None:
    Subscriptions.server = server
    Subscriptions.tmp = tmp_path
    run_state_machine_as_test(Subscriptions, settings=settings(
        max_examples=4, stateful_step_count=10, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
