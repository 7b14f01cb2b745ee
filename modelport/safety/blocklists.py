"""Custom blocklists: per workspace, named lists of exact terms and regular expressions.

Terms match case-insensitively on word boundaries ("ass" does not match "class"); regular
expressions are the operator's own and match case-insensitively anywhere. Both are applied to
a text's screening form (`safety.text`: NFKC, without format characters), and terms are stored
as written but compared in that form too (a term written in fullwidth letters still matches).
Terms compile into one prefix tree per list (an alternation of 10,000 terms took about 1.5 s
on a 17,000-character text; the tree takes about 10 ms).

Patterns come from users, so they are bounded: per list (count, length), per deployment across
every list it names (`check_caps`), and in time: all of a deployment's lists share one time
budget per text, checked between searches and passed to each search as the `regex` library's
timeout (the stdlib `re` has none), and a text that runs out of it raises BlocklistTimeout,
which the screener turns into a refusal: it fails closed, never open. That timeout counts the
whole process's CPU time (measured: two threads each stopped at half their timeout), so on a
busy server a slow pattern is stopped sooner, never later. Matching is CPU work for a thread
(`regex` releases the GIL while it matches), never the event loop.
Match results name the blocklist, never the matched text (P1).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import regex

from modelport.errors import InvalidInput
from modelport.safety.text import screening_form

MAX_TERMS = 10_000
MAX_PATTERNS = 100
MAX_TERM_CHARS = 200
MAX_PATTERN_CHARS = 500
#: across every blocklist one deployment names
MAX_DEPLOYMENT_TERMS = 10_000
MAX_DEPLOYMENT_PATTERNS = 100
MAX_DEPLOYMENT_PATTERN_CHARS = 10_000
#: seconds all of a deployment's blocklists may spend on one text before screening fails closed
DEFAULT_BUDGET_S = 0.2


class BlocklistTimeout(Exception):
    """The blocklists ran past their time budget on a text."""


def _prefix_tree(terms: Iterable[str]) -> str:
    """One regular expression matching exactly the given (non-empty) terms, factored by prefix."""
    root: dict[str, dict] = {}
    for term in terms:
        node = root
        for ch in term:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        branches = [regex.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a term ends here; longer ones continue
            return f"(?:{body})?" if len(branches) == 1 else body + "?"
        return body

    return build(root)


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
        forms = {screening_form(t).casefold() for t in terms} - {""}
        if forms:
            terms_re = regex.compile(rf"(?<!\w)(?:{_prefix_tree(forms)})(?!\w)", regex.IGNORECASE | regex.V1)
        return cls(name=name, terms=terms, patterns=patterns, _terms_re=terms_re, _patterns_re=tuple(compiled))

    def matches(self, text: str, deadline: float | None = None) -> bool:
        """True when a term or a pattern occurs in `text` (in its screening form). Raises
        BlocklistTimeout once `deadline` (time.monotonic(); default: DEFAULT_BUDGET_S from now) passed."""
        if deadline is None:
            deadline = time.monotonic() + DEFAULT_BUDGET_S
        searches = ([self._terms_re] if self._terms_re is not None else []) + list(self._patterns_re)
        for pattern in searches:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BlocklistTimeout(f"blocklist {self.name!r} ran out of time")
            try:
                if pattern.search(text, timeout=left):
                    return True
            except TimeoutError as exc:
                raise BlocklistTimeout(f"blocklist {self.name!r} ran out of time") from exc
        return False


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

    def _named(self, names: Iterable[str]) -> list[Blocklist]:
        found = []
        for name in names:
            blocklist = self._lists.get(name)
            if blocklist is None:
                raise InvalidInput(f"the content filter names blocklist {name!r}, which does not exist",
                                   field="blocklists")
            found.append(blocklist)
        return found

    def check_caps(self, names: Iterable[str]) -> None:
        """Raise InvalidInput when the named lists together exceed a deployment's caps."""
        check_caps(self._named(names))

    def match(self, text: str, names: Iterable[str], budget_s: float = DEFAULT_BUDGET_S) -> list[str]:
        """Names (sorted) of the given blocklists that match `text`, which is in its screening form.
        All of them share `budget_s` seconds; past it, BlocklistTimeout. An unknown name is an error."""
        deadline = time.monotonic() + budget_s
        return sorted(b.name for b in self._named(names) if b.matches(text, deadline))


def check_caps(lists: Iterable[Blocklist]) -> None:
    """Raise InvalidInput when these lists, named by one deployment, together exceed its caps."""
    lists = list(lists)
    terms = sum(len(b.terms) for b in lists)
    patterns = sum(len(b.patterns) for b in lists)
    chars = sum(len(p) for b in lists for p in b.patterns)
    if patterns > MAX_DEPLOYMENT_PATTERNS:
        raise InvalidInput(f"the blocklists of one deployment hold at most {MAX_DEPLOYMENT_PATTERNS} regular "
                           f"expressions in all; these hold {patterns}", field="blocklists")
    if chars > MAX_DEPLOYMENT_PATTERN_CHARS:
        raise InvalidInput(f"the regular expressions of one deployment's blocklists hold at most "
                           f"{MAX_DEPLOYMENT_PATTERN_CHARS} characters in all; these hold {chars}",
                           field="blocklists")
    if terms > MAX_DEPLOYMENT_TERMS:
        raise InvalidInput(f"the blocklists of one deployment hold at most {MAX_DEPLOYMENT_TERMS} terms in all; "
                           f"these hold {terms}", field="blocklists")
