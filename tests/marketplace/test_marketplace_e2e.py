"""The marketplace on a real server, end to end over HTTP: a publisher sells the bundled chat
model (served by the echo runtime, exact token counts), a workspace subscribes with consent,
deploys, calls it with the official client, and is charged exactly at the offer's Decimal
prices; unsubscribing suspends its deployment and subscribing resumes it; retired terms stop
it until the current ones are accepted; a spent budget refuses calls with 403; the publisher's
report shows the contact and the charges, and a publisher key has no workspace powers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.inference import CHAT_MODEL, wait_state
from tests.support.marketplace import Publisher, create_offer, make_publisher, subscribe
from tests.support.server import ECHO_MODEL, Server, loopback_client, start_lean
from tests.support.tenants import Tenant, import_tiny_gguf, make_tenant, ok
from tests.support.waiting import wait_until

BUNDLED_PUBLISHER = "HuggingFaceTB"  # the publisher of the bundled SmolLM2, recorded at first start


@dataclass
class World:
    server: Server
    pub: Publisher
    other: Publisher
    tenant: Tenant
    offer: dict
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    s = start_lean(tmp_path_factory.mktemp("market") / "home", {CHAT_MODEL: "echo", ECHO_MODEL: "echo"})
    try:
        pub = make_publisher(s, BUNDLED_PUBLISHER)
        other = make_publisher(s)
        offer = create_offer(s, pub.key, CHAT_MODEL, input_price="0.5", output_price="1.25")
        yield World(s, pub, other, make_tenant(s), offer, tmp_path_factory.mktemp("gguf"))
    finally:
        s.stop()


def _deploy(w: World, name: str) -> dict:
    with w.server.client(w.tenant.keys["owner"]) as c:
        r = c.post("/api/v1/deployments", json={"name": name, "model": CHAT_MODEL, "type": "serverless"})
    return r


def _call(w: World, key: str, name: str, text: str = "one two three", max_tokens: int = 5) -> httpx.Response:
    with loopback_client(base_url=w.server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        return c.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": text}],
                                                    "max_tokens": max_tokens})


def test_offer_shows_prices_and_terms(world: World) -> None:
    o = world.offer
    assert (o["currency"], o["input_price"], o["output_price"]) == ("USD", "0.5", "1.25")
    assert o["publisher"] == BUNDLED_PUBLISHER and o["terms"]["version"] == "1" and o["state"] == "active"
    with world.server.client(world.tenant.keys["reader"]) as c:
        listed = ok(c.get("/api/v1/marketplace/offers")).json()
        assert [x["id"] for x in listed] == [o["id"]]
        model = ok(c.get(f"/api/v1/models/{CHAT_MODEL}")).json()
        assert model["offer"]["id"] == o["id"] and model["offer"]["input_price"] == "0.5"


def test_publisher_key_has_no_workspace_powers(world: World) -> None:
    key = world.pub.key
    with world.server.client(key) as c:
        for method, path in [("GET", "/api/v1/deployments"), ("GET", "/api/v1/workspaces"), ("GET", "/api/v1/me"),
                             ("GET", "/api/v1/models"), ("POST", "/api/v1/apikeys"), ("GET", "/api/v1/usage"),
                             ("GET", "/api/v1/marketplace/subscriptions"), ("GET", "/api/v1/audit")]:
            r = c.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 403, (path, r.text)
    with openai.OpenAI(base_url=f"{world.server.url}/v1", api_key=key, max_retries=0) as c:
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model="anything", messages=[{"role": "user", "content": "hi"}])
    # and another publisher sees nothing of this one's offers
    with world.server.client(world.other.key) as c:
        assert c.get(f"/api/v1/marketplace/offers/{world.offer['id']}").status_code == 404
        assert ok(c.get("/api/v1/marketplace/offers")).json() == []
        assert c.get("/api/v1/publisher/report", params={"offer": world.offer["id"]}).status_code == 404
        assert c.post(f"/api/v1/marketplace/offers/{world.offer['id']}/retire").status_code == 404
        assert c.get(f"/api/v1/publishers/{BUNDLED_PUBLISHER}").status_code == 404
    with world.server.client(world.tenant.keys["owner"]) as c:  # workspace keys cannot act as publishers
        assert c.get("/api/v1/publisher/report").status_code == 403
        assert c.post(f"/api/v1/marketplace/offers/{world.offer['id']}/retire").status_code == 403


def test_subscribe_deploy_call_charge_unsubscribe_resume(world: World) -> None:
    w = world
    r = _deploy(w, "sold")
    assert r.status_code == 409 and r.json()["error"]["code"] == "subscription_required", r.text
    assert f"modelport marketplace subscribe {w.offer['id']}" in r.json()["error"]["message"]
    # the command it names is one that works: this offer requires consent to share the contact
    assert r.json()["error"]["details"]["command"] == (f"modelport marketplace subscribe {w.offer['id']} --name NAME "
                                                       "--email EMAIL --accept-terms --consent")
    with w.server.client(w.tenant.keys["contributor"]) as c:
        current = ok(c.get(f"/api/v1/marketplace/offers/{w.offer['id']}")).json()["terms"]["sha256"]
        body = {"offer": w.offer["id"], "contact": {"name": "Ada", "email": "ada@example.org"},
                "accept_terms_sha256": current, "consent_to_share_contact": True}
        assert c.post("/api/v1/marketplace/subscriptions", json={**body, "consent_to_share_contact": False}
                      ).status_code == 403  # the offer requires consent
        assert c.post("/api/v1/marketplace/subscriptions", json={**body, "accept_terms_sha256": "0" * 64}
                      ).status_code == 409
    with w.server.client(w.tenant.keys["reader"]) as c:
        assert c.post("/api/v1/marketplace/subscriptions", json=body).status_code == 403
    sub = subscribe(w.server, w.tenant.keys["contributor"], w.offer)
    assert sub["state"] == "active" and sub["terms_sha256"] == w.offer["terms"]["sha256"] and sub["consent_at"]
    dep = ok(_deploy(w, "sold"), 201).json()
    assert wait_state(w.server, "sold", key=w.tenant.keys["owner"])["state"] == "succeeded"
    key = dep["keys"]["primary"]

    prompt = completion = 0
    with openai.OpenAI(base_url=f"{w.server.url}/v1", api_key=key, max_retries=0) as c:
        for i in range(7):
            u = c.chat.completions.create(model="sold", messages=[{"role": "user", "content": "a b c d " * (i + 1)}],
                                          max_tokens=3 + i).usage
            prompt += u.prompt_tokens
            completion += u.completion_tokens
    expected = (Decimal(prompt) * Decimal("0.5") + Decimal(completion) * Decimal("1.25")) / 1000
    with w.server.client(w.tenant.keys["reader"]) as c:
        usage = ok(c.get("/api/v1/usage", params={"group_by": "offer"})).json()
        (row,) = [r for r in usage["rows"] if r["group"] == w.offer["id"]]
        assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (7, prompt, completion)
        assert Decimal(row["charges"]) == expected and row["currency"] == "USD"
        csv_text = ok(c.get("/api/v1/usage", params={"group_by": "deployment", "format": "csv"})).text
        assert csv_text.splitlines()[0] == "deployment,currency,requests,input_tokens,output_tokens,charges"
        (line,) = [ln.split(",") for ln in csv_text.splitlines()[1:] if ln.startswith("sold,")]
        assert line[:5] == ["sold", "USD", "7", str(prompt), str(completion)] and Decimal(line[5]) == expected

    # the publisher's report: the shared contact, volume and charges, per day
    with w.server.client(w.pub.key) as c:
        report = ok(c.get("/api/v1/publisher/report")).json()
        (rrow,) = report["rows"]
        assert rrow["contact"] == {"name": "Ada Buyer", "email": "ada@example.org", "organization": "Buyers Ltd"}
        assert (rrow["requests"], rrow["input_tokens"], rrow["output_tokens"]) == (7, prompt, completion)
        assert Decimal(rrow["charges"]) == expected and rrow["subscription"] == sub["id"]
        assert set(rrow) == {"day", "subscription", "offer", "contact", "currency", "requests", "input_tokens",
                             "output_tokens", "charges"}

    # unsubscribing suspends the deployment (503 with the reason); subscribing again resumes it
    with w.server.client(w.tenant.keys["owner"]) as c:
        assert ok(c.delete(f"/api/v1/marketplace/subscriptions/{sub['id']}")).json()["state"] == "cancelled"
        d = ok(c.get("/api/v1/deployments/sold")).json()
        assert d["state"] == "suspended" and "subscription" in d["state_reason"]
    r = _call(w, key, "sold")
    assert r.status_code == 503 and "subscribe" in r.json()["error"]["message"]
    subscribe(w.server, w.tenant.keys["owner"], w.offer)
    assert wait_state(w.server, "sold", key=w.tenant.keys["owner"])["state"] == "succeeded"
    assert ok(_call(w, key, "sold")).json()["usage"]["completion_tokens"] == 5

    # audit: subscription, consent, cancel
    with w.server.client(w.tenant.keys["owner"]) as c:
        actions = [e["action"] for e in ok(c.get("/api/v1/audit", params={"limit": 200})).json()]
    for a in ("subscription.create", "subscription.consent", "subscription.cancel", "subscription.renew"):
        assert a in actions, a


def test_retired_terms_stop_old_subscriptions_until_the_current_are_accepted(world: World) -> None:
    w = world
    t = make_tenant(w.server)
    subscribe(w.server, t.keys["owner"], w.offer)
    with w.server.client(t.keys["owner"]) as c:
        dep = ok(c.post("/api/v1/deployments", json={"name": "v1", "model": CHAT_MODEL}), 201).json()
    assert wait_state(w.server, "v1", key=t.keys["owner"])["state"] == "succeeded"
    with w.server.client(w.pub.key) as c:
        v2 = ok(c.post(f"/api/v1/marketplace/offers/{w.offer['id']}/terms",
                       json={"version": "2", "text": "New terms."}), 201).json()
        assert v2["terms"]["version"] == "2" and [t["version"] for t in v2["terms_versions"]] == ["1", "2"]
    assert ok(_call(w, dep["keys"]["primary"], "v1")).status_code == 200  # old terms still hold
    with w.server.client(w.pub.key) as c:
        ok(c.post(f"/api/v1/marketplace/offers/{w.offer['id']}/terms/1/retire"))
    assert _call(w, dep["keys"]["primary"], "v1").status_code == 503
    with w.server.client(t.keys["owner"]) as c:
        assert ok(c.get(f"/api/v1/marketplace/subscriptions/{w.offer['id']}")).json()["state"] == "terms_retired"
    subscribe(w.server, t.keys["owner"], v2)
    assert wait_state(w.server, "v1", key=t.keys["owner"])["state"] == "succeeded"
    assert _call(w, dep["keys"]["primary"], "v1").status_code == 200


def test_budget_spent_refuses_with_403_and_audits(world: World) -> None:
    w = world
    t = make_tenant(w.server)
    subscribe(w.server, t.keys["owner"], w.offer)  # the current terms
    with w.server.client(t.keys["owner"]) as c:
        dep = ok(c.post("/api/v1/deployments", json={"name": "capped", "model": CHAT_MODEL}), 201).json()
        # one call: 4 prompt tokens (role + 3 words) and 5 completion = 0.002 + 0.00625 = 0.00825 USD
        b = ok(c.put("/api/v1/budgets/USD", json={"amount": "0.02"})).json()
        assert (b["amount"], b["spent"], b["exhausted"]) == ("0.02", "0", False)
    with w.server.client(t.keys["contributor"]) as c:
        assert c.put("/api/v1/budgets/USD", json={"amount": "1"}).status_code == 403
        assert c.put("/api/v1/budgets/usd", json={"amount": "1"}).status_code == 422
    assert wait_state(w.server, "capped", key=t.keys["owner"])["state"] == "succeeded"
    key = dep["keys"]["primary"]
    statuses = [_call(w, key, "capped").status_code for _ in range(4)]
    assert statuses[:3] == [200, 200, 200] and statuses[3] == 403, statuses
    r = _call(w, key, "capped")
    assert r.json()["error"]["code"] == "budget_exhausted"
    with w.server.client(t.keys["owner"]) as c:
        b = ok(c.get("/api/v1/budgets/USD")).json()
        assert Decimal(b["spent"]) == Decimal("0.02475") and b["remaining"] == "0" and b["exhausted"]
        actions = wait_until(lambda: (a := [e["action"] for e in ok(c.get("/api/v1/audit")).json()])
                             and "budget.refused" in a and a, 10)
        assert {"budget.set", "budget.threshold", "budget.exhausted", "budget.refused"} <= set(actions)
        ok(c.put("/api/v1/budgets/USD", json={"amount": "1"}))
    assert _call(w, key, "capped").status_code == 200


def test_a_governance_policy_can_forbid_subscribing(world: World) -> None:
    """Subscribing is a governed action: a workspace policy that forbids it answers 403
    `policy_denied` and nothing is written."""
    t = make_tenant(world.server)
    with world.server.client(t.keys["owner"]) as c:
        ok(c.put("/api/v1/policies/no-sold-models", json={
            "cedar": 'forbid(principal, action == Action::"subscribe", resource) when { resource.offer != "" };'}),
           201)
        current = ok(c.get(f"/api/v1/marketplace/offers/{world.offer['id']}")).json()["terms"]["sha256"]
        r = c.post("/api/v1/marketplace/subscriptions", json={
            "offer": world.offer["id"], "contact": {"name": "N", "email": "n@example.org"},
            "accept_terms_sha256": current, "consent_to_share_contact": True})
        assert r.status_code == 403 and r.json()["error"]["code"] == "policy_denied", r.text
        assert ok(c.get("/api/v1/marketplace/subscriptions")).json() == []


def test_each_request_is_charged_at_the_prices_in_force_when_it_ran(world: World) -> None:
    """An offer's prices change between two calls: the usage shows each at its own price."""
    w = world
    model = import_tiny_gguf_catalog(w)
    offer = create_offer(w.server, w.pub.key, model, input_price="1", output_price="2", currency="EUR")
    t = make_tenant(w.server)
    subscribe(w.server, t.keys["owner"], offer)
    with w.server.client(t.keys["owner"]) as c:
        dep = ok(c.post("/api/v1/deployments", json={"name": "priced", "model": model}), 201).json()
    assert wait_state(w.server, "priced", key=t.keys["owner"])["state"] == "succeeded"
    first = ok(_call(w, dep["keys"]["primary"], "priced", "one two", max_tokens=3)).json()["usage"]
    with w.server.client(w.other.key) as c:  # not its offer
        assert c.patch(f"/api/v1/marketplace/offers/{offer['id']}", json={"input_price": "0"}).status_code == 404
    with w.server.client(w.pub.key) as c:
        changed = ok(c.patch(f"/api/v1/marketplace/offers/{offer['id']}",
                             json={"input_price": "10", "output_price": "20.5"})).json()
        assert (changed["input_price"], changed["output_price"]) == ("10", "20.5")
    second = ok(_call(w, dep["keys"]["primary"], "priced", "one two three", max_tokens=4)).json()["usage"]
    expected = (Decimal(first["prompt_tokens"]) * 1 + Decimal(first["completion_tokens"]) * 2
                + Decimal(second["prompt_tokens"]) * 10 + Decimal(second["completion_tokens"]) * Decimal("20.5")) / 1000
    with w.server.client(t.keys["owner"]) as c:
        (row,) = ok(c.get("/api/v1/usage", params={"group_by": "offer"})).json()["rows"]
    assert row["requests"] == 2 and Decimal(row["charges"]) == expected and row["currency"] == "EUR"
    with w.server.client(w.server.admin_key) as admin:
        actions = [e["action"] for e in ok(admin.get("/api/v1/audit", params={"all_workspaces": True})).json()]
    assert "offer.prices" in actions


def import_tiny_gguf_catalog(w: World) -> str:
    """A catalog-wide model of the bundled publisher, served by the echo runtime (by its name)."""
    with w.server.client() as admin:
        return import_tiny_gguf(admin, w.tmp, ECHO_MODEL, scope="catalog", publisher=BUNDLED_PUBLISHER)["name"]
