"""Marketplace and usage pages in a real browser (one server for the module): browse the offers,
read the terms, subscribe with consent, meet the wizard's 409 before that, unsubscribe (the
deployment suspended); usage with a request's tokens, and budgets. The attacker's side: a
reader's forged writes (403), another workspace's subscription (404), no session (401), offer
terms as an XSS payload (shown as text, inert).

The module's one offer sells the bundled SmolLM2 (on the echo runtime here); each test works in a
workspace of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.support.browser import SMOLLM2, screenshot, sign_in
from tests.support.inference import chat, create_deployment, wait_state
from tests.support.marketplace import create_offer, make_publisher, subscribe
from tests.support.server import Server, loopback_client
from tests.support.tenants import Tenant, make_tenant, ok, unique
from tests.support.waiting import wait_until

BUNDLED_PUBLISHER = "HuggingFaceTB"  # the publisher of the bundled SmolLM2, recorded at first start
XSS_TERMS = ('Terms <script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2"> '
             '& "quotes" stay text.')


@pytest.fixture(scope="module")
def offer(portal_server: Server) -> Iterator[dict]:
    pub = make_publisher(portal_server, BUNDLED_PUBLISHER)
    o = create_offer(portal_server, pub.key, SMOLLM2, input_price="0.5", output_price="1.25", terms=XSS_TERMS,
                     contact_sharing_required=True)
    yield o


@pytest.fixture
def tenant(portal_server: Server) -> Tenant:
    return make_tenant(portal_server)


def test_browse_subscribe_with_consent_then_unsubscribe_suspends(page, portal_server: Server, offer: dict,  # type: ignore[no-untyped-def]
                                                                  tenant: Tenant, web) -> None:
    url, owner = portal_server.url, tenant.keys["owner"]
    sign_in(page, url, owner)

    # Before subscribing, the wizard's serverless deploy is refused with the fixing command in the page.
    page.goto(f"{url}/deploy?model={SMOLLM2}")
    page.get_by_label("Deployment name").fill("before-subscribing")
    page.get_by_label("Serverless (shared pool, billed per token)").check()
    page.get_by_role("button", name="Deploy", exact=True).click()
    page.locator("main .alert").wait_for()
    assert "modelport marketplace subscribe " + offer["id"] in page.locator("main").inner_text()
    link = page.get_by_role("link", name="Read the offer's terms and subscribe in the marketplace")
    assert link.get_attribute("href") == f"/marketplace/offers/{offer['id']}"
    screenshot(page, "deploy-subscription-required")

    page.get_by_role("link", name="Marketplace", exact=True).click()
    page.wait_for_url(f"{url}/marketplace")
    row = page.locator(f"#offer-{offer['id']}")
    assert row.locator(".publisher").inner_text() == BUNDLED_PUBLISHER
    assert row.locator(".price-in").inner_text() == "0.5 USD" and row.locator(".price-out").inner_text() == "1.25 USD"
    assert "required" in row.inner_text() and "not subscribed" in row.inner_text()
    screenshot(page, "marketplace")

    row.get_by_role("link", name=SMOLLM2).click()
    page.wait_for_url(f"{url}/marketplace/offers/{offer['id']}")
    assert page.locator("#terms-text").inner_text() == XSS_TERMS  # the markup is text, and ran nothing
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img").count() == 0
    assert offer["terms"]["sha256"] in page.locator("code.terms-sha").inner_text()

    # Without consent the server refuses too (the checkbox is `required`; a forged form skips it).
    ws = web(url, owner)
    r = ws.post(f"/marketplace/offers/{offer['id']}/subscribe",
                {"name": "Ada", "email": "ada@example.org", "accept_terms_sha256": offer["terms"]["sha256"]})
    assert r.status_code == 403 and "consent" in r.text
    r = ws.post(f"/marketplace/offers/{offer['id']}/subscribe", {"name": "Ada", "email": "ada@example.org",
                                                                 "accept_terms_sha256": "0" * 64, "consent": "1"})
    assert r.status_code == 409 and "current terms are version 1" in r.text
    with portal_server.client(owner) as c:
        assert ok(c.get("/api/v1/marketplace/subscriptions")).json() == []

    form = page.locator("#subscribe-form")
    form.get_by_label("Contact name").fill("Ada <b>Buyer</b>")
    form.get_by_label("Contact email").fill("ada@example.org")
    form.get_by_label("Organisation").fill("Buyers Ltd")
    form.get_by_label("I accept these terms (version 1)").check()
    form.get_by_label(re.compile("I consent to sharing this contact")).check()
    form.get_by_role("button", name="Subscribe").click()
    page.wait_for_url(re.compile(r".*/marketplace\?subscribed=sub.*"))
    with portal_server.client(owner) as c:
        (sub,) = ok(c.get("/api/v1/marketplace/subscriptions")).json()
    assert sub["state"] == "active" and sub["consent_at"] is not None  # the same service as the API
    assert sub["terms_sha256"] == offer["terms"]["sha256"] and sub["contact"]["name"] == "Ada <b>Buyer</b>"
    card = page.locator(f"#sub-{sub['id']}")
    assert "Ada <b>Buyer</b> <ada@example.org>, Buyers Ltd" in card.inner_text()

    dep = create_deployment(portal_server, "sold", SMOLLM2, key=owner, type="serverless")
    assert ok(chat(portal_server, dep["keys"]["primary"], "sold")).status_code == 200

    page.reload()
    assert card.locator(".covered").inner_text() == "Deployments of it here: sold"
    page.once("dialog", lambda d: (d.accept() if "1 deployment of it (sold) will be suspended" in d.message
                                   else d.dismiss()))
    card.get_by_role("button", name=f"Unsubscribe from {SMOLLM2}").click()
    page.wait_for_url(re.compile(r".*/marketplace\?cancelled=.*"))
    assert "deployments suspended: 1" in page.locator("#alerts").inner_text()
    assert chat(portal_server, dep["keys"]["primary"], "sold").status_code == 503
    with portal_server.client(owner) as c:
        assert ok(c.get("/api/v1/marketplace/subscriptions")).json()[0]["state"] == "cancelled"
    assert page.console.csp_violations() == []


def test_a_reader_sees_no_write_controls_and_forged_writes_are_refused(page, portal_server: Server, offer: dict,  # type: ignore[no-untyped-def]
                                                                       tenant: Tenant, web) -> None:
    url = portal_server.url
    sub = subscribe(portal_server, tenant.keys["owner"], offer)
    sign_in(page, url, tenant.keys["reader"])
    page.get_by_role("link", name="Marketplace", exact=True).click()
    page.wait_for_url(f"{url}/marketplace")
    assert page.locator(f"#sub-{sub['id']}").count() == 1
    assert page.get_by_role("button", name=re.compile("Unsubscribe")).count() == 0
    page.goto(f"{url}/marketplace/offers/{offer['id']}")
    assert page.locator("#subscribe-form").count() == 0
    page.get_by_role("link", name="Usage").click()
    page.wait_for_url(f"{url}/usage")
    assert page.locator("#budget-form").count() == 0

    forged = {f"/marketplace/offers/{offer['id']}/subscribe": {"name": "R", "email": "r@example.org",
                                                               "accept_terms_sha256": offer["terms"]["sha256"],
                                                               "consent": "1"},
              f"/marketplace/subscriptions/{sub['id']}/cancel": {},
              "/usage/budgets": {"currency": "USD", "amount": "1"}}
    for role in ("reader", "contributor"):
        ws = web(url, tenant.keys[role])
        for path, data in forged.items():
            if role == "contributor" and path != "/usage/budgets":
                continue  # contributors subscribe and unsubscribe; budgets are the owners'
            r = ws.post(path, data)
            assert r.status_code == 403, (role, path, r.status_code, r.text[:300])
            assert "does not allow" in r.text
    with portal_server.client(tenant.keys["owner"]) as c:
        assert ok(c.get("/api/v1/marketplace/subscriptions")).json()[0]["state"] == "active"
        assert ok(c.get("/api/v1/budgets")).json() == []

    # The owner's own session with a wrong CSRF token is refused, and nothing changes.
    r = web(url, tenant.keys["owner"]).post(f"/marketplace/subscriptions/{sub['id']}/cancel", csrf="forged")
    assert r.status_code == 403
    with portal_server.client(tenant.keys["owner"]) as c:
        assert ok(c.get("/api/v1/marketplace/subscriptions")).json()[0]["state"] == "active"

    # Another workspace's owner: the subscription is not there (404); no session: 401.
    other = make_tenant(portal_server)
    r = web(url, other.keys["owner"]).post(f"/marketplace/subscriptions/{sub['id']}/cancel")
    assert r.status_code == 404
    with loopback_client(base_url=url, timeout=30) as anon:
        r = anon.post(f"/marketplace/subscriptions/{sub['id']}/cancel", data={"csrf_token": "x"},
                      headers={"Origin": url})
        assert r.status_code == 401, r.status_code
        assert anon.get("/usage", follow_redirects=False).status_code == 303
    # Hostile input: a huge contact is a clear 4xx in the page, nothing written.
    ws = web(url, tenant.keys["owner"])
    r = ws.post(f"/marketplace/offers/{offer['id']}/subscribe",
                {"name": "x" * 5000, "email": "a@b.co", "accept_terms_sha256": offer["terms"]["sha256"],
                 "consent": "1"})
    assert r.status_code == 400 and "contact.name" in r.text
    r = ws.post("/usage/budgets", {"currency": "US$", "amount": "1"})
    assert r.status_code == 400 and "three-letter" in r.text
    r = ws.post("/usage/budgets", {"currency": "USD", "amount": "-5"})
    assert r.status_code == 400 and "decimal" in r.text
    assert web(url, tenant.keys["owner"]).client.get("/usage?group_by=secret").status_code == 400
    # A publisher's name, shown on every offer, cannot carry markup: the API refuses it outright.
    with portal_server.client() as admin:
        assert admin.post("/api/v1/publishers", json={"name": "<img src=x onerror=alert(1)>"}).status_code == 422


def test_usage_shows_a_requests_tokens_and_charges_and_an_owner_sets_a_budget(  # type: ignore[no-untyped-def]
        page, portal_server: Server, offer: dict, tenant: Tenant) -> None:
    url, owner = portal_server.url, tenant.keys["owner"]
    name = unique("use")
    subscribe(portal_server, owner, offer)
    dep = create_deployment(portal_server, name, SMOLLM2, key=owner, type="serverless")
    wait_state(portal_server, name, key=owner)
    answer = ok(chat(portal_server, dep["keys"]["primary"], name, "one two three four", max_tokens=3)).json()
    used = answer["usage"]

    sign_in(page, url, owner)
    page.get_by_role("link", name="Usage").click()
    page.wait_for_url(f"{url}/usage")

    def shown() -> bool:
        page.reload()
        return page.locator("#usage-rows td.group", has_text=name).count() == 1

    wait_until(shown, 30, 0.5, "the request in the usage table")
    row = page.locator("#usage-rows tr", has=page.locator("td.group", has_text=name))
    assert row.locator(".requests").inner_text() == "1"
    assert row.locator(".input-tokens").inner_text() == str(used["prompt_tokens"])
    assert row.locator(".output-tokens").inner_text() == str(used["completion_tokens"])
    # Decimal, at the offer's prices per 1,000 tokens (0.5 in, 1.25 out)
    charges = (Decimal("0.5") * used["prompt_tokens"] + Decimal("1.25") * used["completion_tokens"]) / 1000
    amount, currency = row.locator(".charges").inner_text().split()
    assert Decimal(amount) == charges and currency == "USD"
    assert page.locator("svg.chart rect.bar").count() >= 1
    csv_link = page.get_by_role("link", name="Download CSV")
    assert csv_link.get_attribute("href").startswith("/api/v1/usage?group_by=deployment&format=csv")

    today = datetime.now(UTC).date().isoformat()
    page.get_by_label("Group by").select_option("day")
    page.get_by_label("From").fill(today)
    page.get_by_label("To (included)").fill(today)  # the day picked as "to" counts
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*/usage\?group_by=day.*"))
    assert page.locator("#usage-rows td.group").all_inner_texts() == [today]
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    page.goto(f"{url}/usage?group_by=day&from={yesterday}&to={yesterday}")
    assert page.locator("#usage-rows").count() == 0 and "No usage in this period" in page.locator("main").inner_text()

    page.get_by_label("Currency").fill("EUR")
    page.get_by_label("Amount per month").fill("250.00")
    page.get_by_role("button", name="Set budget").click()
    page.wait_for_url(re.compile(r".*/usage\?budget=EUR.*"))
    assert page.locator("#budget-EUR .remaining").inner_text().startswith("250")
    with portal_server.client(owner) as c:
        assert ok(c.get("/api/v1/budgets/EUR")).json()["amount"] in ("250.00", "250", "250.0")
    screenshot(page, "usage")

    # A platform admin's chargeback view: every workspace's rows, with the workspace named.
    admin = page.context.browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(admin, url, portal_server.admin_key)
    admin.goto(f"{url}/usage")
    admin.get_by_label("Every workspace (chargeback)").check()
    admin.get_by_role("button", name="Show").click()
    admin.wait_for_url(re.compile(r".*/usage\?.*all=1.*"))
    mine = admin.locator("#usage-rows tr", has=admin.locator("td.group", has_text=name))
    assert mine.locator("td.workspace").inner_text() == tenant.name
    assert "all_workspaces=true" in admin.get_by_role("link", name="Download CSV").get_attribute("href")
    admin.context.close()
    assert page.locator("#usage-all").count() == 0  # an owner has no such choice
    page.goto(f"{url}/usage?all=1")
    assert page.locator("#usage-rows td.workspace").count() == 0

    # With rows in the tables, a narrow screen still shows nothing wider than itself.
    page.set_viewport_size({"width": 375, "height": 800})
    for path in ("/usage", "/marketplace", f"/marketplace/offers/{offer['id']}"):
        page.goto(url + path)
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1, path
    assert page.console.csp_violations() == []
