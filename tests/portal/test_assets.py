"""The vendored browser assets are the ones their NOTICE names (sha256), each has its licence
beside it, and no template or script of the portal refers to another origin."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import modelport.portal

PORTAL = Path(modelport.portal.__file__).parent
VENDOR = PORTAL / "static" / "vendor"


def test_vendored_files_match_their_notice() -> None:
    notice = (VENDOR / "NOTICE.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|.*\| ([0-9a-f]{64}) \|$", notice, re.M)
    assert len(rows) == 4
    for path, digest in rows:
        assert hashlib.sha256((VENDOR / path).read_bytes()).hexdigest() == digest, path
    for licence in ("htmx/LICENSE", "swagger-ui/LICENSE", "swagger-ui/NOTICE"):
        assert (VENDOR / licence).stat().st_size > 0
    assert b"4.0.1" in (VENDOR / "htmx" / "htmx.min.js").read_bytes()


def test_no_template_or_portal_script_names_another_origin() -> None:
    for path in [*(PORTAL / "templates").glob("*.html"), PORTAL / "static" / "portal.js",
                 PORTAL / "static" / "docs-init.js", PORTAL / "static" / "portal.css"]:
        text = path.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path.name
        assert "<script>" not in text and not re.search(r"\son[a-z]+=", text), path.name  # no inline script
        assert "cdn" not in text.lower(), path.name


def test_portal_pages_stay_small() -> None:
    """The JavaScript a portal page loads (htmx, hx-sse, portal.js): well under the 200 KB budget
    of HTML and script per page, which the browser tests check for the HTML."""
    js = sum((VENDOR / p).stat().st_size for p in ("htmx/htmx.min.js", "htmx/ext/hx-sse.min.js"))
    js += (PORTAL / "static" / "portal.js").stat().st_size
    assert js < 60_000
