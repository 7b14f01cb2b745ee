"""Governance policy pages in a real browser (one server for the module): the policies in force,
saving and deleting them by role, Cedar's diagnostics in the page, the "test a request" form,
a deploy the wizard shows refused with the policy ids, compliance and its enforcement (the
suspension shown on the deployment page). And the attacker's side: a reader's forged writes
(403), another workspace's policy (404), a policy's text as an XSS payload (shown, inert).

Each test works in a workspace of its own, so workspace policies never reach another test; the
one platform policy matches only a workspace name that does not exist, and is deleted after.
"""

from __future__ import annotations

import re

import pytest

from tests.support.browser import SMOLLM2, screenshot, sign_in
from tests.support.server import Server
from tests.support.tenants import Tenant, make_tenant, ok, unique

FORBID_ALL_DEPLOYS = 'forbid(principal, action == Action::"deploy", resource);'
FORBID_PUBLIC = ('forbid(principal, action in [Action::"deploy", Action::"update_deployment"], resource)\n'
                 'when { resource.public_network_access };')


@pytest.fixture
def tenant(portal_server: Server) -> Tenant:
    return make_tenant(portal_server)


def _policies(server: Server, key: str) -> dict[str, dict]:
    with server.client(key) as c:
        return {p["id"]: p for p in ok(c.get("/api/v1/policies")).json()}


def _save(page, policy_id: str, cedar: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_label("Policy id").fill(policy_id)
    page.get_by_label("Cedar text (one forbid policy)").fill(cedar)
    page.get_by_role("button", name="Save policy").click()


def test_an_owner_saves_tests_meets_in_the_wizard_and_deletes_a_policy(page, portal_server: Server,  # type: ignore[no-untyped-def]
                                                                       tenant: Tenant) -> None:
    url = portal_server.url
    sign_in(page, url, tenant.keys["owner"])
    page.get_by_role("link", name="Policies").click()
    page.wait_for_url(f"{url}/policies")
    assert "No policy is in force here" in page.locator("main").inner_text()

    _save(page, "no-deploys-here", FORBID_ALL_DEPLOYS)
    page.wait_for_url(re.compile(r".*/policies\?saved=no-deploys-here.*"))
    card = page.locator("#policy-no-deploys-here")
    assert "in force from the next request" in page.locator("#alerts").inner_text()
    assert FORBID_ALL_DEPLOYS in card.locator("pre").inner_text()
    assert "workspace " + tenant.name in card.inner_text() and "deny" in card.inner_text()
    assert "no-deploys-here" in _policies(portal_server, tenant.keys["owner"])  # the same service as the API
    screenshot(page, "policies")

    # Test a request: the same decision as POST /api/v1/policies/test, shown in the page (htmx).
    form = page.locator("#test-form")
    form.get_by_label("Action").select_option("deploy")
    form.get_by_label("Model").fill(SMOLLM2)
    form.get_by_label("Type").select_option("serverless")
    form.get_by_role("button", name="Test").click()
    result = page.locator("#test-result .policy-decision")
    result.wait_for()
    assert result.locator(".decision").inner_text() == "deny"
    assert result.locator("code.policy-id").all_inner_texts() == ["no-deploys-here"]
    form.get_by_label("Action").select_option("download_model")
    form.get_by_role("button", name="Test").click()
    page.locator("#test-result .decision", has_text="allow").wait_for()
    with portal_server.client(tenant.keys["owner"]) as c:
        api = ok(c.post("/api/v1/policies/test", json={"action": "deploy", "model": SMOLLM2})).json()
    assert api["decision"] == "deny" and api["denied_by"] == ["no-deploys-here"]

    # The very next deploy in the wizard is refused, and the page names the policy.
    page.goto(f"{url}/deploy")
    page.get_by_label("Deployment name").fill("refused-by-policy")
    page.get_by_role("button", name="Deploy").click()
    page.locator("main .alert code.policy-id").wait_for()
    assert page.locator("main .alert code.policy-id").all_inner_texts() == ["no-deploys-here"]
    assert "Not allowed" in page.locator("h1").inner_text()
    screenshot(page, "deploy-refused-by-policy")
    with portal_server.client(tenant.keys["owner"]) as c:
        assert [d for d in ok(c.get("/api/v1/deployments")).json() if d["name"] == "refused-by-policy"] == []

    # Delete, after a confirmation; the policy is gone for the next request.
    page.goto(f"{url}/policies")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete policy no-deploys-here").click()
    page.wait_for_url(f"{url}/policies")
    assert page.locator("#policy-no-deploys-here").count() == 0
    assert _policies(portal_server, tenant.keys["owner"]) == {}
    assert page.console.csp_violations() == []


def test_cedar_diagnostics_and_a_permit_are_shown_in_the_page_and_nothing_is_saved(  # type: ignore[no-untyped-def]
        page, portal_server: Server, tenant: Tenant) -> None:
    sign_in(page, portal_server.url, tenant.keys["owner"])
    page.goto(f"{portal_server.url}/policies")
    cases = {
        "permit": ("p-permit", "permit(principal, action, resource);", "Only forbid policies can be saved"),
        "syntax": ("p-syntax", "forbid(principal, action, resource) when { resource. };", "not valid Cedar"),
        "schema": ("p-schema", FORBID_ALL_DEPLOYS[:-1] + ' when { resource.colour == "red" };',
                   "does not match the schema"),
        "two policies": ("p-two", FORBID_ALL_DEPLOYS + "\n" + FORBID_ALL_DEPLOYS, "exactly one Cedar policy"),
        "id mismatch": ("p-id", '@id("other")\n' + FORBID_ALL_DEPLOYS, "make them equal"),
    }
    for name, (policy_id, cedar, expected) in cases.items():
        _save(page, policy_id, cedar)
        alert = page.locator("#alerts .alert.error")
        alert.wait_for()
        assert expected in alert.inner_text(), (name, alert.inner_text())
        # The text stays as typed, to be fixed; the page is the policies page, not an error page.
        assert page.get_by_label("Cedar text (one forbid policy)").input_value() == cedar, name
        assert page.get_by_label("Policy id").input_value() == policy_id, name
        assert page.locator("h1").inner_text() == "Policies"
        if name == "schema":  # Cedar's own errors, listed
            assert "colour" in page.locator("#alerts .line-errors").inner_text()
            screenshot(page, "policy-invalid")
    assert _policies(portal_server, tenant.keys["owner"]) == {}


def test_readers_and_contributors_read_only_and_forged_writes_are_refused(web, page, portal_server: Server,  # type: ignore[no-untyped-def]
                                                                          tenant: Tenant) -> None:
    with portal_server.client(tenant.keys["owner"]) as owner:
        ok(owner.put("/api/v1/policies/kept", json={"cedar": FORBID_PUBLIC}))
    sign_in(page, portal_server.url, tenant.keys["reader"])
    page.get_by_role("link", name="Policies").click()  # every member reads the policies in force
    page.wait_for_url(f"{portal_server.url}/policies")
    assert FORBID_PUBLIC in page.locator("#policy-kept pre").inner_text()
    assert page.locator("#policy-form").count() == 0
    assert page.get_by_role("button", name=re.compile("Delete")).count() == 0
    page.goto(f"{portal_server.url}/policies/compliance")
    assert page.get_by_role("button", name=re.compile("Enforce")).count() == 0

    for role in ("reader", "contributor"):
        ws = web(portal_server.url, tenant.keys[role])
        forged = {
            "/policies": {"id": f"by-{role}", "cedar": FORBID_ALL_DEPLOYS, "scope": "workspace"},
            "/policies/kept/delete": {"scope": "workspace"},
            "/policies/compliance/enforce": {},
        }
        for path, data in forged.items():
            r = ws.post(path, data)
            assert r.status_code == 403, (role, path, r.status_code, r.text[:300])
            assert "does not allow" in r.text
        # A workspace owner cannot write the platform's scope either.
    owner_ws = web(portal_server.url, tenant.keys["owner"])
    r = owner_ws.post("/policies", {"id": "owner-platform", "cedar": FORBID_ALL_DEPLOYS, "scope": "platform"})
    assert r.status_code == 403 and "platform admin" in r.text
    assert set(_policies(portal_server, tenant.keys["owner"])) == {"kept"}
    with portal_server.client(tenant.keys["owner"]) as owner:
        events = ok(owner.get("/api/v1/audit", params={"action": "portal.delete"})).json()
    assert any(e["outcome"] == "denied" and e["actor_user_id"] == tenant.user_ids["reader"] for e in events)


def test_another_workspaces_policy_is_404_and_hostile_input_a_clear_4xx(web, portal_server: Server,
                                                                       tenant: Tenant) -> None:
    other = make_tenant(portal_server)
    with portal_server.client(tenant.keys["owner"]) as owner:
        ok(owner.put("/api/v1/policies/a-secret-rule", json={"cedar": FORBID_PUBLIC}))
    ws = web(portal_server.url, other.keys["owner"])
    assert "a-secret-rule" not in ws.client.get("/policies").text
    r = ws.post("/policies/a-secret-rule/delete", {"scope": "workspace"})
    assert r.status_code == 404 and "Not found" in r.text
    assert "a-secret-rule" not in ws.client.get("/policies/compliance").text
    assert "a-secret-rule" in _policies(portal_server, tenant.keys["owner"])
    # Bad input: a clear 400, nothing else.
    assert ws.post("/policies/NOT%20AN%20ID/delete", {"scope": "workspace"}).status_code == 400
    assert ws.post("/policies/x/delete", {"scope": "galaxy"}).status_code == 400
    r = ws.post("/policies/test", {"action": "teleport", "model": SMOLLM2})
    assert r.status_code == 400 and "action" in r.text
    r = ws.post("/policies/test", {"action": "deploy", "model": "no-such-model"})
    assert r.status_code == 404 and "No model of that name" in r.text
    # An htmx request gets the message for the page's alert region.
    r = ws.client.post("/policies/test", data={"action": "deploy", "model": "no-such-model"},
                       headers={"HX-Request": "true", "X-CSRF-Token": ws.csrf})
    assert r.status_code == 404 and r.headers["hx-retarget"] == "#alerts" and "<html" not in r.text
    # Too long a policy: the page says the limit, keeps nothing; a huge form is refused unread.
    r = ws.post("/policies", {"id": "too-long", "cedar": FORBID_ALL_DEPLOYS + "//" + "x" * 17_000})
    assert r.status_code == 400 and "cedar" in r.text and "16384" in r.text
    r = ws.post("/policies", {"id": "huge", "cedar": "x" * 300_000})
    assert r.status_code == 413
    deep = 'forbid(principal, action, resource) when { ' + "(" * 500 + "true" + ")" * 500 + " };"
    r = ws.post("/policies", {"id": "deep", "cedar": deep})
    assert r.status_code == 400 and "nests brackets" in r.text
    # An owner's write without the session's CSRF token, or from another site, is refused.
    for kw in ({"csrf": ""}, {"headers": {"Origin": "https://evil.example"}}):
        r = ws.post("/policies", {"id": "forged", "cedar": FORBID_ALL_DEPLOYS}, **kw)
        assert r.status_code == 403 and "CSRF" in r.text
        r = ws.post("/policies/compliance/enforce", {}, **kw)
        assert r.status_code == 403 and "CSRF" in r.text
    assert _policies(portal_server, other.keys["owner"]) == {}


PAYLOAD = "<img src=x id=xss-probe onerror=window.__xss=1>"
SCRIPT = "<script id=xss-script>window.__xss=2</script>"


def test_a_policys_text_and_id_are_shown_as_text_and_run_nothing(page, portal_server: Server,  # type: ignore[no-untyped-def]
                                                                 tenant: Tenant) -> None:
    cedar = (f"// {PAYLOAD}\n"
             f'forbid(principal, action == Action::"deploy", resource) when {{ resource.name == "{SCRIPT}" }};')
    sign_in(page, portal_server.url, tenant.keys["owner"])
    page.goto(f"{portal_server.url}/policies")
    _save(page, "xss-text", cedar)
    page.wait_for_url(re.compile(r".*saved=xss-text.*"))
    for path in ("/policies", "/policies?saved=" + "%3Cimg%20src%3Dx%20id%3Dxss-probe%3E", "/policies/compliance"):
        page.goto(portal_server.url + path)
        _assert_inert(page)
    page.goto(f"{portal_server.url}/policies")
    assert PAYLOAD in page.locator("#policy-xss-text pre").inner_text()
    assert SCRIPT in page.locator("#policy-xss-text pre").inner_text()
    # An id carrying markup is refused; the page shows it back as text in the field.
    page.get_by_label("Policy id").evaluate("e => e.removeAttribute('pattern')")
    _save(page, PAYLOAD[:60], FORBID_ALL_DEPLOYS)
    page.locator("#alerts .alert.error").wait_for()
    assert "A policy id is" in page.locator("#alerts").inner_text()
    assert page.get_by_label("Policy id").input_value() == PAYLOAD[:60]
    _assert_inert(page)
    assert page.console.csp_violations() == []


def _assert_inert(page) -> None:  # type: ignore[no-untyped-def]
    for sel in ("#xss-probe", "#xss-script", "img[src='x']"):
        assert page.locator(sel).count() == 0, sel
    assert page.evaluate("window.__xss") is None


def test_compliance_lists_violations_and_enforce_suspends_with_the_reason_shown(  # type: ignore[no-untyped-def]
        page, portal_server: Server, tenant: Tenant) -> None:
    name = unique("public-dep")
    with portal_server.client(tenant.keys["owner"]) as owner:
        ok(owner.post("/api/v1/deployments", json={"name": name, "model": SMOLLM2, "type": "serverless"}))
        ok(owner.put("/api/v1/policies/no-public", json={"cedar": FORBID_PUBLIC}))
        ok(owner.put("/api/v1/policies/watch-serverless", json={
            "cedar": '@audit\nforbid(principal, action == Action::"deploy", resource) '
                     'when { resource.type == "serverless" };'}))
    sign_in(page, portal_server.url, tenant.keys["owner"])
    page.goto(f"{portal_server.url}/policies")
    page.get_by_role("link", name="Compliance of what exists").click()
    row = page.locator("tr.violation", has_text=name)
    assert row.locator("td").nth(3).inner_text() == "no-public"
    assert row.locator("td").nth(4).inner_text() == "watch-serverless"
    # Listing changed nothing.
    with portal_server.client(tenant.keys["owner"]) as owner:
        assert ok(owner.get(f"/api/v1/deployments/{name}")).json()["suspensions"] == []
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=re.compile("Enforce")).click()
    page.locator("#enforced").wait_for()
    assert "1 deployment suspended" in page.locator("#enforced").inner_text()
    screenshot(page, "policy-compliance")
    with portal_server.client(tenant.keys["owner"]) as owner:
        dep = ok(owner.get(f"/api/v1/deployments/{name}")).json()
        assert [s["reason"] for s in dep["suspensions"]] == ["policy"]
        events = ok(owner.get("/api/v1/audit", params={"action": "policy.enforce"})).json()
        assert events and events[0]["actor_user_id"] == tenant.user_ids["owner"]
    page.get_by_role("link", name=name).click()
    suspension = page.locator("ul.suspensions li")
    assert "policy" in suspension.inner_text() and "no-public" in suspension.inner_text()
    # Once the policy is gone, enforcing again resumes it (only the audit policy still lists it).
    with portal_server.client(tenant.keys["owner"]) as owner:
        ok(owner.delete("/api/v1/policies/no-public"))
    page.goto(f"{portal_server.url}/policies/compliance")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=re.compile("Enforce")).click()
    assert "0 deployments suspended, 1 resumed" in page.locator("#enforced").inner_text()
    assert page.locator("tr.violation", has_text=name).locator("td").nth(3).inner_text() == ""
    page.goto(f"{portal_server.url}/deployments/{name}")
    assert page.locator("ul.suspensions").count() == 0


def test_a_platform_admin_saves_a_platform_policy_that_members_see_and_cannot_delete(  # type: ignore[no-untyped-def]
        web, page, portal_server: Server, tenant: Tenant) -> None:
    nowhere = unique("no-such-ws")
    cedar = f'forbid(principal, action == Action::"deploy", resource) when {{ resource.workspace == "{nowhere}" }};'
    sign_in(page, portal_server.url, portal_server.admin_key)
    page.goto(f"{portal_server.url}/policies")
    try:
        page.get_by_label("Scope").select_option("platform")
        _save(page, "platform-guard", cedar)
        page.wait_for_url(re.compile(r".*saved=platform-guard.*"))
        assert "platform" in page.locator("#policy-platform-guard .badge").first.inner_text()
        page.goto(f"{portal_server.url}/policies/compliance?all=1")  # platform admins: every workspace
        assert "every workspace" in page.locator("h1").inner_text()
        assert page.locator("form[action='/policies/compliance/enforce'] input[name='all']").count() == 1
        ws = web(portal_server.url, tenant.keys["owner"])
        listing = ws.client.get("/policies").text
        assert 'id="policy-platform-guard"' in listing
        assert "Delete<span class=\"sr-only\"> policy platform-guard" not in listing
        r = ws.post("/policies/platform-guard/delete", {"scope": "platform"})
        assert r.status_code == 403
        r = ws.post("/policies/platform-guard/delete", {"scope": "workspace"})
        assert r.status_code == 404
        r = ws.post("/policies/compliance/enforce", {"all": "1"})  # an owner is no platform admin
        assert r.status_code == 403
        assert "every workspace" not in ws.client.get("/policies/compliance?all=1").text
    finally:
        with portal_server.client() as admin:
            admin.delete("/api/v1/policies/platform-guard", params={"scope": "platform"})
    assert "platform-guard" not in _policies(portal_server, tenant.keys["owner"])
