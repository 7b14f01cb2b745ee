"""Managing things from the portal: regenerate a deployment key (an htmx request, CSRF token in its
header), members and roles, and the platform admin's users and workspaces."""

from __future__ import annotations

import re

from tests.support.browser import SMOLLM2, sign_in
from tests.support.server import Server
from tests.support.tenants import ok, unique


def test_regenerate_a_deployment_key_with_htmx(page, portal_server: Server) -> None:  # type: ignore[no-untyped-def]
    with portal_server.client() as admin:
        created = ok(admin.post("/api/v1/deployments", json={"name": "regen", "model": SMOLLM2,
                                                            "type": "serverless"})).json()
    old = created["keys"]["primary"]
    sign_in(page, portal_server.url, portal_server.admin_key)
    page.goto(f"{portal_server.url}/deployments/regen")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Regenerate primary key").click()
    new = page.locator("#new-key-secret")
    new.wait_for()
    secret = new.inner_text()
    assert secret.startswith("mpd_") and secret != old
    assert page.url.endswith("/deployments/regen")  # swapped into the page, no navigation
    with portal_server.client() as admin:
        ok(admin.get("/api/v1/deployments/regen"))
    body = {"model": "regen", "messages": [{"role": "user", "content": "x"}]}
    with portal_server.client(old) as c:
        assert c.post("/v1/chat/completions", json=body).status_code == 401
    assert page.console.errors == []


def test_members_and_roles(page, portal_server: Server) -> None:  # type: ignore[no-untyped-def]
    name = unique("member")
    with portal_server.client() as admin:
        ok(admin.post("/api/v1/users", json={"name": name}))
    sign_in(page, portal_server.url, portal_server.admin_key)
    page.goto(f"{portal_server.url}/workspace")
    page.get_by_label("User", exact=True).fill(name)
    page.get_by_label("Role", exact=True).select_option("reader")
    page.get_by_role("button", name="Add member").click()
    page.wait_for_url(re.compile(r".*/workspace$"))
    page.get_by_label(f"Role of {name}").select_option("contributor")
    page.locator("tr", has_text=name).get_by_role("button", name="Change role").click()
    page.wait_for_url(re.compile(r".*/workspace$"))
    with portal_server.client() as admin:
        roles = {m["user"]: m["role"] for m in ok(admin.get("/api/v1/members")).json()}
    assert roles[name] == "contributor"
    page.locator("tr", has_text=name).get_by_role("button", name="Remove").click()
    page.wait_for_url(re.compile(r".*/workspace$"))
    with portal_server.client() as admin:
        assert name not in {m["user"] for m in ok(admin.get("/api/v1/members")).json()}


def test_platform_admin_creates_a_user_and_a_workspace(page, portal_server: Server) -> None:  # type: ignore[no-untyped-def]
    user, ws = unique("adm-user"), unique("adm-ws")
    sign_in(page, portal_server.url, portal_server.admin_key)
    page.goto(f"{portal_server.url}/admin")
    users_form = page.locator("form[action='/admin/users']")
    users_form.get_by_label("Name").fill(user)
    users_form.get_by_role("button", name="Create user").click()
    page.wait_for_url(re.compile(r".*/admin$"))
    ws_form = page.locator("form[action='/admin/workspaces']")
    ws_form.get_by_label("Name").fill(ws)
    ws_form.get_by_label("Owner (user)").fill(user)
    ws_form.get_by_role("button", name="Create workspace").click()
    page.wait_for_url(re.compile(r".*/admin$"))
    assert ws in page.locator("main").inner_text()
    page.get_by_role("button", name=f"Disable {user}").click()
    page.wait_for_url(re.compile(r".*/admin$"))
    with portal_server.client() as admin:
        u = next(x for x in ok(admin.get("/api/v1/users")).json() if x["name"] == user)
        assert u["disabled"] is True
        assert any(w["name"] == ws for w in ok(admin.get("/api/v1/workspaces")).json())
    # A bad name is a readable error in the page, and nothing is created.
    users_form = page.locator("form[action='/admin/users']")
    users_form.get_by_label("Name").fill("Not Valid!")
    users_form.get_by_role("button", name="Create user").click()
    assert "lowercase letters" in page.locator(".alert.error").inner_text()


def test_download_where_the_licence_allows_verified(web, portal_server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from tests.support.tenants import import_tiny_gguf

    with portal_server.client() as admin:
        free = import_tiny_gguf(admin, tmp_path, unique("free"), downloadable=True)
        closed = import_tiny_gguf(admin, tmp_path, unique("closed"))
    ws = web(portal_server.url, portal_server.admin_key)
    page = ws.client.get(f"/catalog/{free['name']}").text
    assert "Download model.gguf" in page
    r = ws.client.get(f"/catalog/{free['name']}/download?file=model.gguf")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == free["files"][0]["sha256"]
    assert "Download" not in ws.client.get(f"/catalog/{closed['name']}").text.split("<dl")[0]
    r = ws.client.get(f"/catalog/{closed['name']}/download?file=model.gguf")
    assert r.status_code == 403 and "not downloadable" in r.text


def test_saving_the_filter_form_keeps_what_it_does_not_show(web, portal_server: Server) -> None:  # type: ignore[no-untyped-def]
    with portal_server.client() as admin:
        ok(admin.post("/api/v1/deployments", json={"name": "cf-keep", "model": SMOLLM2, "type": "serverless"}))
        ok(admin.put("/api/v1/deployments/cf-keep/content-filter",
                     json={"enabled": False, "profanity": {"enabled": True, "mode": "block"},
                           "jailbreak": {"enabled": False, "mode": "annotate"}}))
    ws = web(portal_server.url, portal_server.admin_key)
    r = ws.post("/deployments/cf-keep/content-filter", {"enabled": "", "hate_prompt": "low", "streaming": "buffered"})
    assert r.status_code == 303, r.text[:300]
    with portal_server.client() as admin:
        cf = ok(admin.get("/api/v1/deployments/cf-keep/content-filter")).json()
    assert cf["hate"]["prompt_threshold"] == "low"  # what the form changed
    assert cf["profanity"] == {"enabled": True, "mode": "block"}  # what it does not show, kept
    assert cf["jailbreak"] == {"enabled": False, "mode": "annotate"}
