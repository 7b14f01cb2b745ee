"""The portal in a real browser: Debian's `chromium` driven by Playwright for Python.

Playwright's own browser download cannot run here or on an air-gapped host, so tests launch the
system Chromium through `executable_path` (never `playwright install`; `.ci/run` installs the
`chromium` package with apt-get when it is missing). Also: a signed-in httpx client for forged
requests, screenshots under .artifacts/portal/, and a collector of the page's console errors
(a Content-Security-Policy violation is one).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.server import loopback_client

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".artifacts" / "portal"
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
               "--disable-default-apps", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Console:
    """Everything the page reported as an error: console errors, uncaught exceptions, CSP."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page) -> None:  # type: ignore[no-untyped-def]
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "Content Security Policy" in e or "Content-Security-Policy" in e]


def screenshot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, url: str, key: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{url}/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/catalog.*"))


@dataclass
class WebSession:
    """A signed-in portal session driven with httpx: for requests a page would never send."""

    client: httpx.Client
    csrf: str

    def __enter__(self) -> WebSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def post(self, path: str, data: dict | None = None, *, csrf: str | None = None, **kw) -> httpx.Response:
        body = {"csrf_token": self.csrf if csrf is None else csrf, **(data or {})}
        return self.client.post(path, data=body, **kw)


def web_session(url: str, key: str) -> WebSession:
    c = loopback_client(base_url=url, timeout=300, follow_redirects=False)
    page = c.get("/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = c.post("/signin", data={"csrf_token": token, "api_key": key, "next": "/catalog"})
    assert r.status_code == 303, r.text
    home = c.get("/catalog")
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)  # type: ignore[union-attr]
    return WebSession(client=c, csrf=csrf)

#: The bundled chat model, as the catalog names it.
SMOLLM2 = "SmolLM2-135M-Instruct"
