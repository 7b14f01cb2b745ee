"""The form in which a text is screened: what a reader (and a model) takes it to say.

The model receives the caller's text unchanged; the classifier and the blocklists see its
screening form, so that spelling tricks do not hide a word from them:
- format characters (Unicode category Cf: zero-width space and joiners, soft hyphen, word
  joiner, byte order mark, bidirectional controls...) are removed: they are invisible, and a
  word with one inside reads as the word;
- Unicode tag characters (U+E0020-U+E007E), invisible copies of ASCII that some models read,
  become the ASCII they stand for;
- the result is NFKC-normalised: fullwidth letters, ligatures, superscripts and the like become
  their plain forms, and a letter with a combining accent its composed form.

Not covered: look-alike letters of other scripts (a Cyrillic "a" in a Latin word), which NFKC
keeps apart.
"""

from __future__ import annotations

import unicodedata

import regex

_TAGS = {cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)}
_FORMAT = regex.compile(r"\p{Cf}+")


def screening_form(text: str) -> str:
    """`text` without format characters, tags decoded, NFKC-normalised (ASCII is returned as is)."""
    if text.isascii():
        return text
    # Format characters go first, so that what they separated can compose ("e", ZWJ, U+0301 -> "é");
    # NFKC maps no character to a format character (checked over all of Unicode), so one pass is enough.
    return unicodedata.normalize("NFKC", _FORMAT.sub("", text.translate(_TAGS)))
