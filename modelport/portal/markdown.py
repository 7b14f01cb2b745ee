"""Model cards as safe HTML: CommonMark with raw HTML turned off, so a card's `<script>`, event
handler or `<img onerror>` is shown as text; links keep only http(s) and mailto targets
(markdown-it's own validator refuses javascript:, vbscript:, file: and data: other than images),
and every link opens without a referrer."""

from __future__ import annotations

from markdown_it import MarkdownIt
from markupsafe import Markup

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).disable("image")
MAX_CARD_CHARS = 200_000


def _safe_link(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "mailto:", "#", "/"))


_MD.validateLink = _safe_link  # type: ignore[method-assign]  # markdown-it's documented hook


def render_markdown(text: str | None) -> Markup:
    if not text:
        return Markup("")
    html = _MD.render(text[:MAX_CARD_CHARS])
    html = html.replace("<a href=", '<a rel="noopener noreferrer nofollow" href=')
    return Markup(html)  # noqa: S704 - markdown-it escaped every raw character; html is off
