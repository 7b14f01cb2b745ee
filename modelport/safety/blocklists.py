"""Custom blocklists: per workspace, named lists of exact terms and regular expressions.

Terms match case-insensitively on word boundaries ("ass" does not match "class"); regular
expressions are the operator's own and match case-insensitively anywhere. Patterns come from
users, so they are bounded (length, count) and compiled and run with the `regex` library's
per-call timeout: a catastrophic-backtracking pattern makes screening fail (closed), never
hang a gateway worker. The stdlib `re` has no timeout, which is why `regex` is used.
Match results name the blocklist, never the matched text (P1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import regex

from modelport.errors import InvalidInput

MAX_TERMS = 10_000
MAX_PATTERNS = 100
MAX_TERM_CHARS = 200
MAX_PATTERN_CHARS = 500
#: seconds one pattern may spend on one text before screening fails closed
MATCH_TIMEOUT_S = 0.05


class BlocklistTimeout(Exception):
    """A blocklist pattern ran past its time limit on a text."""


@dataclass(frozen=True)
class Blocklist:
    """One named blocklist, compiled. Build it with `Blocklist.build` (validates its input)."""

    name: str
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    _terms_re: regex.Pattern | None = field(default=None, repr=False, compare=False)
    _patterns_re: tuple[regex.Pattern, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def build(cls, name: str, terms: Iterable[str] = (), patterns: Iterable[str] = ()) -> Blocklist:
        terms = tuple(t.strip() for t in terms if t.strip())
        patterns = tuple(patterns)
        if len(terms) > MAX_TERMS:
            raise InvalidInput(f"a blocklist holds at most {MAX_TERMS} terms", field="terms")
        if len(patterns) > MAX_PATTERNS:
            raise InvalidInput(f"a blocklist holds at most {MAX_PATTERNS} regular expressions", field="patterns")
        if any(len(t) > MAX_TERM_CHARS for t in terms):
            raise InvalidInput(f"a blocklist term is at most {MAX_TERM_CHARS} characters", field="terms")
        compiled = []
        for i, p in enumerate(patterns):
            if not p or len(p) > MAX_PATTERN_CHARS:
                raise InvalidInput(f"regular expression {i} must be 1-{MAX_PATTERN_CHARS} characters",
                                   field="patterns")
            try:
                compiled.append(regex.compile(p, regex.IGNORECASE | regex.V1))
            except regex.error as exc:
                raise InvalidInput(f"regular expression {i} does not compile: {exc.msg}", field="patterns") from exc
        terms_re = None
        if terms:
            alternation = "|".join(regex.escape(t) for t in sorted(set(terms), key=len, reverse=True))
            terms_re = regex.compile(rf"(?<!\w)(?:{alternation})(?!\w)", regex.IGNORECASE | regex.V1)
        return cls(name=name, terms=terms, patterns=patterns, _terms_re=terms_re, _patterns_re=tuple(compiled))

    def matches(self, text: str) -> bool:
        """True when a term or a pattern occurs in `text`. Raises BlocklistTimeout on a runaway pattern."""
        try:
            if self._terms_re is not None and self._terms_re.search(text, timeout=MATCH_TIMEOUT_S):
                return True
            return any(p.search(text, timeout=MATCH_TIMEOUT_S) for p in self._patterns_re)
        except TimeoutError as exc:
            raise BlocklistTimeout(f"blocklist {self.name!r} timed out") from exc


class BlocklistSet:
    """The blocklists of one workspace, by name; `match` answers which of the named ones hit."""

    def __init__(self, lists: Iterable[Blocklist] = ()) -> None:
        self._lists: dict[str, Blocklist] = {b.name: b for b in lists}

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Mapping[str, Iterable[str]]]) -> BlocklistSet:
        """`{"name": {"terms": [...], "patterns": [...]}}` as stored per workspace."""
        return cls(Blocklist.build(n, v.get("terms", ()), v.get("patterns", ())) for n, v in spec.items())

    def names(self) -> list[str]:
        return sorted(self._lists)

    def match(self, text: str, names: Iterable[str]) -> list[str]:
        """Names (sorted) of the given blocklists that match `text`; an unknown name is an error."""
        hits = []
        for name in names:
            blocklist = self._lists.get(name)
            if blocklist is None:
                raise InvalidInput(f"the content filter names blocklist {name!r}, which does not exist",
                                   field="blocklists")
            if blocklist.matches(text):
                hits.append(name)
        return sorted(hits)
