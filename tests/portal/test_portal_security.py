"""The portal as an attacker meets it: forged writes (CSRF), a reader's session, another
workspace's resources, session fixation and expiry, the one-time sign-in link, the security
headers. Requests a page would never send go through httpx with a real session cookie; what a
user sees is checked in Chromium.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.browser import SMOLLM2, sign_in
from tests.support.server import ECHO_MODEL, Server, free_port, loopback_client, loopback_get, start_lean
from tests.support.tenants import Tenant, import_tiny_gguf, make_tenant, ok, unique

PAGES = ["/catalog", f"/catalog/{SMOLLM2}", "/deployments", "/deploy", "/playground", "/datasets", "/finetuning",
         "/policies", "/policies/compliance", "/marketplace", "/usage", "/workspace", "/admin"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The loopback address is a trusted proxy here, so that a request can say it came over TLS."""
    s = start_lean(tmp_path_factory.mktemp("portal-sec") / "home", {ECHO_MODEL: "echo", SMOLLM2: "echo"},
                   MODELPORT_FINETUNE_CONCURRENCY="0", MODELPORT_TRUSTED_PROXIES="127.0.0.1/32")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def tenants(server: Server) -> tuple[Tenant, Tenant]:
    return make_tenant(server), make_tenant(server)


def _db(server: Server) -> sqlite3.Connection:
    return sqlite3.connect(server.home / "modelport.db", timeout=30)


def _keys_named(server: Server, key: str, name: str) -> list[dict]:
    with server.client(key) as c:
        return [k for k in ok(c.get("/api/v1/apikeys")).json() if k["name"] == name]


# -- headers, assets ---------------------------------------------------------------------------

def test_every_page_sends_the_csp_and_no_inline_script(web, server: Server) -> None:
    ws = web(server.url, server.admin_key)
    for path in [*PAGES, "/signin", "/docs"]:
        r = ws.client.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp, path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text), f"inline script on {path}"
        assert not re.search(r"\son[a-z]+=", r.text), f"inline event handler on {path}"
        # Nothing loads from another origin (a link to a licence's terms is a navigation, not a load).
        assert not re.search(r"\ssrc=\"(https?:)?//|<link[^>]+href=\"(https?:)?//", r.text), path
        assert len(r.content) < 200_000, path
    for asset in ("/static/portal.js", "/static/vendor/htmx/htmx.min.js", "/static/vendor/swagger-ui/swagger-ui.css"):
        assert "default-src 'self'" in ws.client.get(asset).headers["content-security-policy"]


def test_docs_render_from_local_assets_only(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    foreign: list[str] = []
    page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(server.url) else None)
    page.goto(f"{server.url}/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "modelport" in page.locator(".swagger-ui .info .title").inner_text()
    page.locator(".opblock").first.wait_for()
    assert foreign == [] and page.console.csp_violations() == []


def test_pages_at_1280_and_on_a_narrow_screen_without_csp_violations(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    from tests.support.browser import screenshot

    sign_in(page, server.url, server.admin_key)
    for width in (1280, 375):
        page.set_viewport_size({"width": width, "height": 800})
        for path in PAGES:
            page.goto(server.url + path)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (path, width, overflow)  # nothing wider than the screen
            unlabeled = page.evaluate("""() => [...document.querySelectorAll(
                'input:not([type=hidden]), select, textarea')].filter(e =>
                !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.name || e.id)""")
            assert unlabeled == [], (path, unlabeled)
            if width == 375:
                screenshot(page, "narrow" + path.replace("/", "-"))
    # Keyboard: the skip link is the first stop, and focus is visible.
    page.goto(server.url + "/catalog")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    assert page.console.csp_violations() == [] and page.console.errors == []


# -- CSRF ----------------------------------------------------------------------------------------

def test_forged_writes_are_refused(web, server: Server) -> None:
    ws = web(server.url, server.admin_key)
    other = web(server.url, server.admin_key)
    for name, kw in {
        "no token": {"csrf": ""},
        "wrong token": {"csrf": "0" * 64},
        "another session's token": {"csrf": other.csrf},
        "another site": {"headers": {"Origin": "https://evil.example"}},
        "opaque origin": {"headers": {"Origin": "null"}},
    }.items():
        r = ws.post("/workspace/apikeys", {"name": f"forged-{len(name)}"}, **kw)
        assert r.status_code == 403, (name, r.status_code)
        assert "CSRF" in r.text
        assert _keys_named(server, server.admin_key, f"forged-{len(name)}") == []
    # htmx and upload requests carry the token in a header: the same check.
    r = ws.client.post("/datasets/upload?name=forged", content=b"{}", headers={"X-CSRF-Token": "nope"})
    assert r.status_code == 403
    # The same request with the right token works: the refusals above were the CSRF check.
    assert ws.post("/workspace/apikeys", {"name": "csrf-control"}).status_code == 200
    assert len(_keys_named(server, server.admin_key, "csrf-control")) == 1


def test_sign_in_needs_the_forms_own_token(server: Server) -> None:
    with loopback_client(base_url=server.url) as c:
        r = c.post("/signin", data={"api_key": server.admin_key, "csrf_token": "x"})
        assert r.status_code == 403 and "mp_session" not in r.headers.get("set-cookie", "")


# -- roles and workspaces ------------------------------------------------------------------------

def test_a_readers_session_shows_no_write_controls_and_cannot_write(web, page, server: Server,  # type: ignore[no-untyped-def]
                                                                    tenants: tuple[Tenant, Tenant]) -> None:
    t, _ = tenants
    sign_in(page, server.url, t.keys["reader"])
    page.goto(f"{server.url}/catalog/{SMOLLM2}")
    assert page.get_by_role("link", name="Deploy", exact=True).count() == 0
    page.goto(f"{server.url}/datasets")
    assert page.locator("#upload-form").count() == 0
    page.goto(f"{server.url}/deployments")
    assert page.get_by_role("link", name="New deployment").count() == 0
    assert page.get_by_role("link", name="Admin").count() == 0
    ws = web(server.url, t.keys["reader"])
    forged = {
        "/deploy": {"name": "by-reader", "model": SMOLLM2, "type": "serverless"},
        "/workspace/members": {"user": t.users["contributor"], "role": "owner"},
        "/finetuning": {"model": SMOLLM2, "dataset": "x"},
        "/admin/users": {"name": unique("by-reader")},
        "/admin/workspaces": {"name": unique("by-reader")},
    }
    for path, data in forged.items():
        r = ws.post(path, data)
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert "does not allow" in r.text or "platform admin" in r.text
    r = ws.client.post("/datasets/upload?name=by-reader", content=b"{}", headers={"X-CSRF-Token": ws.csrf})
    assert r.status_code == 403
    with server.client(t.keys["owner"]) as owner:
        assert [d for d in ok(owner.get("/api/v1/deployments")).json() if d["name"] == "by-reader"] == []
        roles = {m["user"]: m["role"] for m in ok(owner.get("/api/v1/members")).json()}
        assert roles[t.users["contributor"]] == "contributor"
    assert ws.client.get("/admin").status_code == 403
    # Audited like refusals on the REST API: the actor and the route, nothing of the request.
    with server.client(t.keys["owner"]) as owner:
        events = ok(owner.get("/api/v1/audit", params={"action": "portal.deploy"})).json()
    assert any(e["outcome"] == "denied" and e["status_code"] == 403 and e["actor_user_id"] == t.user_ids["reader"]
               for e in events)


def test_a_contributor_cannot_change_the_content_filter(web, server: Server, tenants: tuple[Tenant, Tenant]) -> None:
    t, _ = tenants
    with server.client(t.keys["owner"]) as owner:
        ok(owner.post("/api/v1/deployments", json={"name": "cf-guard", "model": SMOLLM2, "type": "serverless"}))
    ws = web(server.url, t.keys["contributor"])
    r = ws.post("/deployments/cf-guard/content-filter", {"enabled": ""})
    assert r.status_code == 403
    page = ws.client.get("/deployments/cf-guard").text
    assert re.search(r"<fieldset\s+disabled", page)  # the form shows, disabled


def test_another_workspaces_resources_are_404(web, server: Server, tenants: tuple[Tenant, Tenant],
                                              tmp_path: Path) -> None:
    a, b = tenants
    with server.client(a.keys["owner"]) as owner:
        ok(owner.post("/api/v1/deployments", json={"name": "a-private", "model": SMOLLM2, "type": "serverless"}))
        ds = ok(owner.post("/api/v1/datasets?name=a-data", content=b'{"prompt": "p", "completion": "c"}\n',
                           headers={"Content-Type": "application/octet-stream"})).json()
        model = import_tiny_gguf(owner, tmp_path, unique("a-model"))
    ws = web(server.url, b.keys["owner"])
    for path in ("/deployments/a-private", f"/catalog/{model['name']}", "/finetuning/ftjob_0000000000000000"):
        r = ws.client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "Not found" in r.text
    for path in ("/deployments/a-private/keys", f"/datasets/{ds['id']}/delete", "/deployments/a-private/delete"):
        r = ws.post(path, {"which": "primary", "confirm": "a-private"})
        assert r.status_code == 404, (path, r.status_code)
    r = ws.post("/playground/chat", {"deployment": "a-private", "message": "hi"})
    assert r.status_code == 404
    with server.client(a.keys["owner"]) as owner:
        assert ok(owner.get("/api/v1/datasets/a-data")).json()["id"] == ds["id"]
        assert ok(owner.get("/api/v1/deployments/a-private")).json()["name"] == "a-private"


# -- sessions ------------------------------------------------------------------------------------

def test_session_cookie_flags_and_a_fixed_session_id_is_never_adopted(server: Server) -> None:
    with loopback_client(base_url=server.url) as c:
        c.cookies.set("mp_session", "attacker-chosen-value", domain="127.0.0.1")
        form = c.get("/signin").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        r = c.post("/signin", data={"csrf_token": token, "api_key": server.admin_key})
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        issued = re.search(r"mp_session=([^;]+)", cookie).group(1)  # type: ignore[union-attr]
        assert issued != "attacker-chosen-value" and len(issued) >= 40
    with loopback_client(base_url=server.url, cookies={"mp_session": "attacker-chosen-value"}) as c:
        assert c.get("/catalog").status_code == 303
    # Over TLS (a trusted proxy says so), the cookie is Secure.
    with loopback_client(base_url=server.url, headers={"X-Forwarded-Proto": "https"}) as c:
        form = c.get("/signin")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        c.cookies.set("mp_signin", form.cookies["mp_signin"], domain="127.0.0.1")
        r = c.post("/signin", data={"csrf_token": token, "api_key": server.admin_key},
                   headers={"Origin": "https://" + server.url.split("//")[1]})
        assert r.status_code == 303, r.text
        assert "Secure" in r.headers["set-cookie"]


def test_a_new_sign_in_ends_the_previous_session_of_that_browser(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, server.url, server.admin_key)
    first = next(c["value"] for c in page.context.cookies() if c["name"] == "mp_session")
    sign_in(page, server.url, server.admin_key)
    second = next(c["value"] for c in page.context.cookies() if c["name"] == "mp_session")
    assert first != second
    with loopback_client(base_url=server.url, cookies={"mp_session": first}) as c:
        assert c.get("/catalog").status_code == 303


@pytest.mark.parametrize("column", ["last_seen_at", "expires_at"])
def test_idle_and_absolute_expiry_end_the_session(page, server: Server, column: str) -> None:  # type: ignore[no-untyped-def]
    """The session row's clock is moved back (idle) or its end brought forward (absolute): the
    next page asks to sign in again, and the row is gone."""
    sign_in(page, server.url, server.admin_key)
    page.goto(f"{server.url}/workspace")
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "mp_session")
    sid = hashlib.sha256(cookie.encode()).hexdigest()
    with _db(server) as db:
        n = db.execute(f"UPDATE portal_sessions SET {column} = '2001-01-01 00:00:00.000000' WHERE id = ?",
                       (sid,)).rowcount
        assert n == 1
    page.goto(f"{server.url}/workspace")
    assert "/signin" in page.url
    with _db(server) as db:
        assert db.execute("SELECT count(*) FROM portal_sessions WHERE id = ?", (sid,)).fetchone()[0] == 0


def test_a_revoked_key_ends_its_sessions(page, server: Server, tenants: tuple[Tenant, Tenant]) -> None:  # type: ignore[no-untyped-def]
    t, _ = tenants
    with server.client(t.keys["owner"]) as owner:
        k = ok(owner.post("/api/v1/apikeys", json={"name": "short-lived"})).json()
    sign_in(page, server.url, k["key"])
    page.goto(f"{server.url}/deployments")
    assert page.url.endswith("/deployments")
    with server.client(t.keys["owner"]) as owner:
        ok(owner.delete(f"/api/v1/apikeys/{k['id']}"))
    page.goto(f"{server.url}/deployments")
    assert "/signin" in page.url


def test_sign_out_ends_the_session_on_the_server(web, server: Server) -> None:
    ws = web(server.url, server.admin_key)
    cookie = ws.client.cookies["mp_session"]
    assert ws.post("/signout").status_code == 303
    with loopback_client(base_url=server.url, cookies={"mp_session": cookie}) as c:
        assert c.get("/catalog").status_code == 303


# -- the one-time sign-in link -------------------------------------------------------------------

def _signin_link(server: Server) -> str:
    env = {**server.env}
    out = subprocess.run([sys.executable, "-m", "modelport", "signin-link"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    assert out.startswith(server.url + "/signin/link/"), out
    return out


def test_the_signin_link_works_once_expires_and_is_never_logged(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    link = _signin_link(server)
    page.goto(link)
    assert page.url.endswith("/catalog") and "admin" in page.locator(".who").inner_text()
    page.context.clear_cookies()
    r = page.goto(link)
    assert r.status == 401 and "not valid" in page.content()
    late = _signin_link(server)
    with _db(server) as db:
        db.execute("UPDATE portal_signin_links SET expires_at = '2001-01-01 00:00:00.000000'")
    assert page.goto(late).status == 401
    token = link.rsplit("/", 1)[1]
    logs = server.logs() + (server.home / "logs" / "server.log").read_text()
    assert token not in logs and late.rsplit("/", 1)[1] not in logs
    assert '"route":"/signin/link/{token}"' in logs  # the access log has the template, never the token


def test_serve_prints_the_signin_link_on_a_terminal_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_") or k == "MODELPORT_CACHE_DIR"}
    env.update({"MODELPORT_HOME": str(home), "MODELPORT_LOAD_BUNDLED_MODELS": "false",
                "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "COLUMNS": "400",
                "MODELPORT_LOG_FILE": str(home / "server.log")})
    primary, replica = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "modelport", "serve", "--port", str(port)], env=env,
                            stdout=replica, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    os.close(replica)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while not re.search(rb"/signin/link/[A-Za-z0-9_-]{40,}", seen):
            if time.monotonic() > deadline or proc.poll() is not None:
                break
            ready, _, _ = select.select([primary], [], [], 1)
            if ready:
                seen += os.read(primary, 4096)
        link = re.search(rb"(http://\S+/signin/link/[A-Za-z0-9_-]{40,})", seen)
        assert link, seen
        url = link.group(1).decode()

        def up() -> bool:
            try:
                return loopback_get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        while not up():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with loopback_client() as c:
            assert c.get(url).status_code == 303 and "mp_session" in c.cookies
            assert c.get(url).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        os.close(primary)
    assert url.rsplit("/", 1)[1] not in (home / "server.log").read_text()


# -- size ----------------------------------------------------------------------------------------

def test_a_huge_form_is_refused_and_a_large_dataset_streams(web, server: Server) -> None:
    ws = web(server.url, server.admin_key)
    r = ws.post("/workspace/apikeys", {"name": "huge", "padding": "x" * 300_000})
    assert r.status_code == 413 and "at most 256 KB" in r.text
    assert _keys_named(server, server.admin_key, "huge") == []
    # A dataset streams as the request body, past the control plane's 4 MiB body limit.
    row = b'{"prompt": "' + b"p" * 1000 + b'", "completion": "c"}\n'
    body = row * 6000  # about 6 MB
    r = ws.client.post("/datasets/upload?name=big-data", content=body,
                       headers={"X-CSRF-Token": ws.csrf, "HX-Request": "true",
                                "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text[:300]
    assert "6000 rows" in r.text


def test_deleting_a_workspace_ends_its_sessions_and_leaves_no_session_row(web, server: Server) -> None:
    t = make_tenant(server)
    ws = web(server.url, t.keys["owner"])
    assert ws.client.get("/workspace").status_code == 200
    with server.client() as admin:
        ok(admin.delete(f"/api/v1/workspaces/{t.name}"))
    with _db(server) as db:  # removed by the offboarding itself, before any request of the session
        assert db.execute("SELECT count(*) FROM portal_sessions WHERE workspace_id = ?", (t.id,)).fetchone()[0] == 0
    assert ws.client.get("/workspace").status_code == 303


def test_an_unknown_page_is_a_readable_404_and_the_apis_keep_their_shape(server: Server) -> None:
    with loopback_client(base_url=server.url, headers={"Accept": "text/html"}) as browser:
        r = browser.get("/no-such-page")
        assert r.status_code == 404 and "There is no such page" in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        api = browser.get("/api/v1/no-such-route")
        assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
