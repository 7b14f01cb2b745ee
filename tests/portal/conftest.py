"""One Chromium for the portal package (launching costs about a second), one server per module.

The server serves the bundled chat model on the echo runtime (a real worker process that
answers with the words of the prompt), so the flows run in seconds; tests marked `chat_model`
use the real SmolLM2 on llama.cpp.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.browser import LAUNCH_ARGS, SMOLLM2, Console, WebSession, chromium_path, web_session
from tests.support.server import ECHO_MODEL, Server, start_lean


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """Package scope, not session: Playwright's sync API runs an event loop in the main thread
    while it is open, and every later test that calls asyncio.run() would find it running (44
    tests of other packages failed so in one full run)."""
    path = chromium_path()
    if path is None:
        pytest.fail("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium "
                    "(`.ci/run` does it); Playwright's own download is never used")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A fresh browser context per test (its own cookies), 1280 px wide; console errors collected
    on `page.console`."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.console = Console()
    pg.console.attach(pg)
    try:
        yield pg
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def portal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("portal") / "home", {ECHO_MODEL: "echo", SMOLLM2: "echo"},
                   MODELPORT_FINETUNE_CONCURRENCY="0")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def web() -> Iterator[object]:
    """`web(url, key)`: a signed-in httpx session (tests.support.browser.WebSession), closed after."""
    opened: list[WebSession] = []

    def open_session(url: str, key: str) -> WebSession:
        opened.append(web_session(url, key))
        return opened[-1]

    try:
        yield open_session
    finally:
        for s in opened:
            s.client.close()
