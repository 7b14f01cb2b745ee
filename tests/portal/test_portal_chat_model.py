"""The playground with the real bundled model: SmolLM2 on llama.cpp, deployed serverless through
the wizard, answers in the browser token by token."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.support.browser import SMOLLM2, screenshot, sign_in
from tests.support.server import Server, start_lean
from tests.support.waiting import wait_until

pytestmark = pytest.mark.chat_model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("portal-llm") / "home", MODELPORT_FINETUNE_CONCURRENCY="0")
    try:
        yield s
    finally:
        s.stop()


def test_smollm2_streams_into_the_playground(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    url = server.url
    sign_in(page, url, server.admin_key)
    page.goto(f"{url}/catalog/{SMOLLM2}")
    page.get_by_role("link", name="Deploy", exact=True).click()
    page.get_by_label("Deployment name").fill("smol")
    page.get_by_role("button", name="Deploy", exact=True).click()
    assert page.locator("#key-primary").inner_text().startswith("mpd_")

    def ready() -> bool:
        page.goto(f"{url}/deployments/smol")
        state = page.locator("dd .badge").first.inner_text()
        assert state != "failed", page.locator("main").inner_text()
        return state == "succeeded"

    wait_until(ready, 300, 1, "the SmolLM2 deployment")
    page.get_by_role("link", name="Open in the playground").click()
    page.evaluate("""() => {
        window.__appends = 0;
        new MutationObserver(ms => ms.forEach(m => {
            if (m.target.classList && m.target.classList.contains('answer')) window.__appends += m.addedNodes.length;
        })).observe(document.getElementById('conversation'), {childList: true, subtree: true});
    }""")
    page.get_by_label("Max tokens").fill("24")
    page.get_by_label("Message").fill("Name three colours.")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => document.querySelector('#history input') !== null", timeout=300_000)
    answer = page.locator("p.answer").inner_text()
    assert re.search(r"[A-Za-z]{3}", answer), answer
    assert page.evaluate("window.__appends") >= 5  # streamed, not delivered at once
    assert page.console.errors == []
    screenshot(page, "playground-smollm2")
