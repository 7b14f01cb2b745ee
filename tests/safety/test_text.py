"""The form in which texts are screened: NFKC, without format characters (Unicode category Cf)."""

from __future__ import annotations

import unicodedata

import pytest

from modelport.safety.text import screening_form


def fullwidth(text: str) -> str:
    """`text` in fullwidth forms (U+FF01-U+FF5E), which NFKC maps back to ASCII."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize(("written", "screened"), [
    ("plain ASCII, unchanged.", "plain ASCII, unchanged."),
    (fullwidth("fullwidth ABC 123"), "fullwidth ABC 123"),
    ("zero\u200bwidth", "zerowidth"),
    ("joi\u200dner and non\u200cjoiner", "joiner and nonjoiner"),
    ("soft\u00adhyphen", "softhyphen"),
    ("word\u2060joiner", "wordjoiner"),
    ("\ufeffbyte order mark", "byte order mark"),
    ("bidi \u202eesrever\u202c and \u2066isolate\u2069", "bidi esrever and isolate"),
    ("ligature \ufb01ne", "ligature fine"),
    ("no\u00a0break space", "no break space"),
    ("e\u200d\u0301", "\u00e9"),  # a format character between a letter and its accent
    ("hidden \U000e0001\U000e006b\U000e0069\U000e006c\U000e006c\U000e007f tags", "hidden kill tags"),
])
def test_screening_form(written: str, screened: str) -> None:
    assert screening_form(written) == screened


def test_no_format_character_survives() -> None:
    every_cf = "".join(chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf")
    out = screening_form(f"a{every_cf}b")
    assert all(unicodedata.category(ch) != "Cf" for ch in out)
    assert out.startswith("a") and out.endswith("b")


def test_the_form_is_stable() -> None:
    text = fullwidth("Mixed") + "\u200b " + fullwidth("text") + "\u00ad with e\u0301 and \ufb01"
    once = screening_form(text)
    assert screening_form(once) == once
    assert unicodedata.normalize("NFKC", once) == once
