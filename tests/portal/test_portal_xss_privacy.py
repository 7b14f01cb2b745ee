"""Everything a user controls is shown as text and runs nothing: a model card, its publisher and
licence link, an API key's name, a workspace description, search and filter values reflected in
the page, a dataset upload's error, a playground message and the model's streamed answer.

The Content-Security-Policy would stop an injected script anyway; these tests check the layer
under it: the payload's elements never exist in the DOM (escaping), and the text is visible.
And P1: a canary typed into the playground is found nowhere on disk or in the logs afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.browser import SMOLLM2, sign_in
from tests.support.server import ECHO_MODEL, Server, start_lean
from tests.support.tenants import import_tiny_gguf, ok, unique
from tests.support.waiting import wait_until

PAYLOAD = "<img src=x id=xss-probe onerror=window.__xss=1>"
SCRIPT = "<script id=xss-script>window.__xss=2</script>"
CARD = f"""# Card

{PAYLOAD}

<div id="xss-div" onclick="window.__xss=3">raw html block</div>

[a link](javascript:window.__xss=4) and <a id="xss-a" href="javascript:window.__xss=5">inline</a> {SCRIPT}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("portal-xss") / "home", {ECHO_MODEL: "echo", SMOLLM2: "echo"},
                   MODELPORT_FINETUNE_CONCURRENCY="0")
    try:
        yield s
    finally:
        s.stop()


def assert_inert(page) -> None:  # type: ignore[no-untyped-def]
    """No element of a payload exists and nothing of it ran."""
    for sel in ("#xss-probe", "#xss-script", "#xss-div", "#xss-a", "a[href^='javascript']", "img[src='x']"):
        assert page.locator(sel).count() == 0, sel
    assert page.evaluate("window.__xss") is None


def test_model_card_publisher_and_licence_link(page, server: Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with server.client() as admin:
        m = import_tiny_gguf(admin, tmp_path, unique("xss-model"), card=CARD, publisher=PAYLOAD,
                             license_url="javascript:window.__xss=6")
    sign_in(page, server.url, server.admin_key)
    page.goto(f"{server.url}/catalog/{m['name']}")
    assert_inert(page)
    text = page.locator("main").inner_text()
    assert PAYLOAD in text  # the publisher, as text
    assert "raw html block" in text and "a link" in text
    assert page.get_by_role("link", name="terms").count() == 0  # a javascript: licence URL is no link
    page.goto(f"{server.url}/catalog?q={quote(m['name'])}")
    assert_inert(page)
    assert PAYLOAD in page.locator("li.card").inner_text()


def test_names_descriptions_and_reflected_filters(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    with server.client() as admin:
        ok(admin.post("/api/v1/apikeys", json={"name": PAYLOAD}))
        ok(admin.post("/api/v1/workspaces", json={"name": unique("xss-ws"), "description": PAYLOAD + SCRIPT}))
    sign_in(page, server.url, server.admin_key)
    for path in ("/workspace", "/admin", f"/workspace?action={quote(PAYLOAD)}",
                 f"/catalog?q={quote(PAYLOAD[:90])}&publisher={quote(SCRIPT)}"):
        page.goto(server.url + path)
        assert_inert(page)
    page.goto(f"{server.url}/workspace?action={quote(PAYLOAD)}")
    assert page.get_by_label("Action").input_value() == PAYLOAD
    page.goto(f"{server.url}/workspace")
    assert PAYLOAD in page.locator("main").inner_text()
    page.goto(f"{server.url}/admin")
    assert PAYLOAD in page.locator("main").inner_text()


def test_dataset_upload_errors_are_text(page, server: Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "x.jsonl"
    f.write_bytes(b'{"prompt": "' + PAYLOAD.replace('"', "'").encode() + b'"}\n')
    sign_in(page, server.url, server.admin_key)
    page.goto(f"{server.url}/datasets")
    page.evaluate("document.getElementById('ds-name').removeAttribute('pattern')")
    page.get_by_label("Name").fill(PAYLOAD[:60])  # an invalid name: refused, and the refusal is inserted
    page.get_by_label("File").set_input_files(str(f))
    page.get_by_role("button", name="Upload").click()
    page.locator("#upload-result .alert").wait_for()
    assert "name must be" in page.locator("#upload-result").inner_text()
    page.get_by_label("Name").fill("xss-data")
    page.get_by_role("button", name="Upload").click()
    page.locator("#upload-result .line-errors").wait_for()
    assert "line 1: completion: must be a non-empty string" in page.locator("#upload-result").inner_text()
    assert_inert(page)


def _deployed(server: Server, name: str) -> None:
    with server.client() as admin:
        ok(admin.post("/api/v1/deployments", json={"name": name, "model": SMOLLM2, "type": "serverless"}))
        wait_until(lambda: ok(admin.get(f"/api/v1/deployments/{name}")).json()["state"] == "succeeded", 120, 0.3,
                   f"{name} to start")


def test_playground_message_and_streamed_answer_are_text(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    _deployed(server, "xss-chat")
    sign_in(page, server.url, server.admin_key)
    page.goto(f"{server.url}/playground?deployment=xss-chat")
    page.get_by_label("Message").fill(PAYLOAD + " " + SCRIPT)
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => document.querySelector('#history input') !== null")
    assert_inert(page)
    assert PAYLOAD in page.locator("p.answer").inner_text()  # the echo model repeated it: as text
    # The history travels back as form values, not markup: a second turn stays inert too.
    page.get_by_label("Message").fill("again")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => document.querySelectorAll('#history input').length == 8")
    assert_inert(page)


def test_p1_a_canary_typed_into_the_playground_is_found_nowhere(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    """The canary crosses the browser, the portal, the gateway and a worker, comes back streamed,
    and is then looked for in every file of the server's home (database, WAL, logs, blobs, run
    directory) and in its output."""
    canary = "portalcanary" + secrets.token_hex(8)
    _deployed(server, "p1-chat")
    sign_in(page, server.url, server.admin_key)
    page.goto(f"{server.url}/playground?deployment=p1-chat")
    page.get_by_label("System prompt").fill(f"system {canary}")
    page.get_by_label("Message").fill(f"remember {canary}")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => document.querySelector('#history input') !== null")
    assert canary in page.locator("p.answer").inner_text()
    assert page.locator("#history input").count() == 4  # one turn: a role and a content field each side
    page.get_by_label("Message").fill(f"and again {canary}")  # with the first turn as history
    page.get_by_role("button", name="Send").click()
    # The second turn is over when its four fields are there too (waiting for 4, as this test did
    # until 2026-12-03, was already true after the first turn: it passed only while the second turn
    # was still running at the first poll, and timed out when the echo worker was faster).
    page.wait_for_function("() => document.querySelectorAll('#history input').length == 8")
    assert page.locator("p.answer").nth(1).inner_text().count(canary) >= 1
    page.goto(f"{server.url}/deployments/p1-chat")  # flushes the usage counts to the database
    assert int(page.locator(".usage-counts span").first.inner_text().split()[0]) >= 2
    from modelport.config import Settings

    places = [server.home, Settings(home=server.home).run_dir]
    hits = [str(p) for root in places if root.exists() for p in root.rglob("*")
            if p.is_file() and canary.encode() in p.read_bytes()]
    assert hits == []
    assert canary not in server.logs()
