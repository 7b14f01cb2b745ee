"""The portal end to end in headless Chromium: what a data scientist does on a working day.

Sign in with the admin key, find the bundled chat model, deploy it serverless through the
wizard (keys shown once, with snippets), chat in the playground and watch the answer stream in,
see a blocked prompt's annotation, upload a dataset and see its validation errors per line,
create and revoke an API key, sign out. The chat model runs on the echo runtime here (a real
worker process that answers with the prompt's words); test_portal_chat_model.py uses SmolLM2.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.browser import SMOLLM2, screenshot, sign_in
from tests.support.server import Server
from tests.support.tenants import ok
from tests.support.waiting import wait_until

GOOD = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
BAD = GOOD + b'{"messages": [{"role": "robot", "content": "x"}]}\nnot json\n'


def _wait_deployed(page, url: str, name: str) -> None:  # type: ignore[no-untyped-def]
    def ready() -> bool:
        page.goto(f"{url}/deployments/{name}")
        state = page.locator("dd .badge").first.inner_text()
        assert state != "failed", page.content()
        return state == "succeeded"

    wait_until(ready, 120, 0.5, f"deployment {name} to start")


def _deploy(page, url: str, name: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{url}/deploy?model={SMOLLM2}")
    page.get_by_label("Deployment name").fill(name)
    page.get_by_label("Serverless (shared pool, billed per token)").check()
    page.get_by_role("button", name="Deploy", exact=True).click()
    page.wait_for_url(re.compile(r".*/deploy$"))


def _send(page, text: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


@pytest.fixture(scope="module")
def chat_deployment(portal_server: Server, browser) -> str:  # type: ignore[no-untyped-def]
    """The flow's deployment, made through the wizard once for the module's tests."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    try:
        sign_in(page, portal_server.url, portal_server.admin_key)
        _deploy(page, portal_server.url, "flow-chat")
        _wait_deployed(page, portal_server.url, "flow-chat")
    finally:
        ctx.close()
    return "flow-chat"


def test_find_the_chat_model_and_deploy_it(page, portal_server: Server) -> None:  # type: ignore[no-untyped-def]
    url = portal_server.url
    sign_in(page, url, portal_server.admin_key)
    page.get_by_label("Search").fill("SmolLM2")
    page.get_by_role("button", name="Filter").click()
    cards = page.locator("li.card")
    assert cards.count() == 1
    card = cards.first.inner_text()
    for fact in ("HuggingFaceTB", "Apache-2.0", "chat-completion", "gguf", "passed"):
        assert fact in card
    screenshot(page, "catalog")
    page.get_by_role("link", name=SMOLLM2).click()
    assert "SmolLM2-135M-Instruct (GGUF, Q4_1)" in page.locator("article.card-md h1").inner_text()  # the card
    assert re.search(r"[0-9a-f]{64}", page.locator("code.hash").first.inner_text())
    screenshot(page, "model")
    page.get_by_role("link", name="Deploy", exact=True).click()
    page.get_by_label("Deployment name").fill("wizard-chat")
    page.get_by_label("Serverless (shared pool, billed per token)").check()
    screenshot(page, "deploy-wizard")
    page.get_by_role("button", name="Deploy", exact=True).click()
    # The keys, shown once, with copy buttons and the three snippets.
    primary = page.locator("#key-primary").inner_text()
    secondary = page.locator("#key-secondary").inner_text()
    assert primary.startswith("mpd_") and secondary.startswith("mpd_") and primary != secondary
    assert page.locator("button.copy").count() == 5
    for snippet in ("#snippet-curl", "#snippet-openai", "#snippet-azure"):
        assert "wizard-chat" in page.locator(snippet).inner_text()
    assert page.console.csp_violations() == []
    screenshot(page, "deployed-keys")
    # The keys work, and the page never shows them again.
    _wait_deployed(page, url, "wizard-chat")
    assert primary not in page.content()
    with portal_server.client(primary) as c:
        r = ok(c.post("/v1/chat/completions", json={"model": "wizard-chat",
                                                     "messages": [{"role": "user", "content": "ping"}]}))
        assert r.json()["choices"][0]["message"]["content"]
    page.goto(f"{url}/deployments/wizard-chat")
    assert page.locator(".usage-counts span").first.inner_text() == "1 request"
    assert page.locator("svg.chart rect.bar").count() == 24
    assert float(page.locator("svg.chart rect.bar").last.get_attribute("height")) > 0  # this hour's bar
    screenshot(page, "deployment")


def test_playground_streams_the_answer_and_keeps_the_turns(page, portal_server: Server,  # type: ignore[no-untyped-def]
                                                           chat_deployment: str) -> None:
    sign_in(page, portal_server.url, portal_server.admin_key)
    page.goto(f"{portal_server.url}/playground?deployment={chat_deployment}")
    # Count the appends to the answer as they arrive: more than one means it streamed.
    page.evaluate("""() => {
        window.__appends = 0;
        new MutationObserver(ms => ms.forEach(m => {
            if (m.target.classList && m.target.classList.contains('answer')) window.__appends += m.addedNodes.length;
        })).observe(document.getElementById('conversation'), {childList: true, subtree: true});
    }""")
    page.get_by_label("System prompt").fill("Answer briefly.")
    _send(page, "alpha beta gamma delta")
    answer = page.locator("p.answer").first
    page.wait_for_function("() => document.querySelector('#history input[name=history_role]') !== null")
    assert answer.inner_text().startswith("alpha beta gamma delta")
    assert page.evaluate("window.__appends") > 3
    assert page.get_by_label("Message").input_value() == ""
    _send(page, "second turn")
    page.wait_for_function("() => document.querySelectorAll('#history input[name=history_role]').length == 4")
    answers = page.locator("p.answer")
    assert answers.count() == 2 and answers.nth(1).inner_text().startswith("second turn")
    assert page.console.errors == []
    screenshot(page, "playground")


def test_a_blocked_prompt_shows_the_filter_annotation(page, portal_server: Server,  # type: ignore[no-untyped-def]
                                                      chat_deployment: str) -> None:
    url = portal_server.url
    with portal_server.client() as admin:
        ok(admin.put("/api/v1/safety/blocklists/banned", json={"terms": ["zanzibarquux"]}))
    sign_in(page, url, portal_server.admin_key)
    page.goto(f"{url}/deployments/{chat_deployment}")
    page.get_by_label("Filter on").check()  # test servers start deployments with the filter off
    page.get_by_label("Blocklists (names, comma-separated)").fill("banned")
    page.get_by_role("button", name="Save the filter").click()
    page.wait_for_url(re.compile(rf".*/deployments/{chat_deployment}$"))
    assert page.get_by_label("Blocklists (names, comma-separated)").input_value() == "banned"
    page.goto(f"{url}/playground?deployment={chat_deployment}")
    _send(page, "tell me about zanzibarquux please")
    note = page.locator(".filter-note")
    note.wait_for()
    assert "Your prompt was blocked by the deployment's content filter" in note.inner_text()
    assert page.locator("p.answer").first.inner_text() == ""
    screenshot(page, "playground-blocked")


def test_dataset_upload_shows_errors_per_line_then_uploads_and_deletes(page, portal_server: Server,  # type: ignore[no-untyped-def]
                                                                      tmp_path: Path) -> None:
    url = portal_server.url
    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    bad.write_bytes(BAD)
    good.write_bytes(GOOD * 50)
    sign_in(page, url, portal_server.admin_key)
    page.goto(f"{url}/datasets")
    page.get_by_label("Name").fill("flow-data")
    page.get_by_label("File").set_input_files(str(bad))
    page.get_by_role("button", name="Upload").click()
    errors = page.locator("#upload-result .line-errors li")
    errors.first.wait_for()
    texts = errors.all_inner_texts()
    assert texts == ["line 2: messages[0].role: must be one of system, user, assistant",
                     "line 3: line: is not valid JSON"]
    screenshot(page, "datasets-errors")
    page.get_by_label("Name").fill("flow-data")
    page.get_by_label("File").set_input_files(str(good))
    page.get_by_role("button", name="Upload").click()
    page.locator("#upload-result .alert.ok").wait_for()
    assert "50 rows" in page.locator("#upload-result").inner_text()
    assert page.locator("#upload-progress").evaluate("p => p.value") == 100
    page.goto(f"{url}/datasets")
    assert "flow-data" in page.locator("table.list").inner_text()
    screenshot(page, "datasets")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete flow-data").click()
    page.wait_for_url(re.compile(r".*/datasets$"))
    assert "flow-data" not in page.locator("table.list").inner_text()
    with portal_server.client() as admin:
        assert all(d["name"] != "flow-data" for d in ok(admin.get("/api/v1/datasets")).json())


def test_create_and_revoke_an_api_key_then_sign_out(page, portal_server: Server) -> None:  # type: ignore[no-untyped-def]
    url = portal_server.url
    sign_in(page, url, portal_server.admin_key)
    page.goto(f"{url}/workspace")
    screenshot(page, "workspace")
    page.get_by_label("Name", exact=True).fill("laptop")
    page.get_by_role("button", name="Create API key").click()
    secret = page.locator("#new-api-key").inner_text()
    assert secret.startswith("mpk_")
    with portal_server.client(secret) as c:
        ok(c.get("/api/v1/me"))
    page.goto(f"{url}/workspace")
    assert secret not in page.content()  # shown once
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Revoke laptop").click()
    page.wait_for_url(re.compile(r".*/workspace$"))
    row = page.locator("tr", has_text="laptop")
    assert "revoked" in row.inner_text()
    portal_server_key_refused(portal_server, secret)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/signin$"))
    page.goto(f"{url}/workspace")
    assert "/signin" in page.url


def portal_server_key_refused(server: Server, secret: str) -> None:
    with server.client(secret) as c:
        assert c.get("/api/v1/me").status_code == 401
