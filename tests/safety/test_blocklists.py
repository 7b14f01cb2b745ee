"""Custom blocklists: terms on word boundaries, case-insensitive; regexes bounded and timed."""

from __future__ import annotations

import pytest
import regex

from modelport.errors import InvalidInput
from modelport.safety.blocklists import Blocklist, BlocklistSet, BlocklistTimeout


def fullwidth(text: str) -> str:
    """`text` in fullwidth forms (U+FF01-U+FF5E), which NFKC maps back to ASCII."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def test_terms_match_case_insensitively_on_word_boundaries() -> None:
    bl = Blocklist.build("brands", terms=["Acme Corp", "ass"])
    assert bl.matches("We should never mention ACME corp in a reply.")
    assert bl.matches("what an ass.")
    assert not bl.matches("This class is fun")  # no match inside a word
    assert not bl.matches("acme corporation")


def test_regular_expressions_match() -> None:
    bl = Blocklist.build("ids", patterns=[r"\bproj-\d{4}\b"])
    assert bl.matches("see PROJ-1234 for details")
    assert not bl.matches("proj-12 is too short")


@pytest.mark.parametrize("patterns", [["(unclosed"], ["x" * 501], [""]])
def test_bad_patterns_are_refused(patterns: list[str]) -> None:
    with pytest.raises(InvalidInput):
        Blocklist.build("bad", patterns=patterns)


def test_a_runaway_pattern_times_out_instead_of_hanging() -> None:
    bl = Blocklist.build("evil", patterns=[r"(a|aa)+$"])
    with pytest.raises(BlocklistTimeout):
        bl.matches("a" * 40 + "b")


def test_set_reports_names_of_matching_lists_and_refuses_unknown_names() -> None:
    s = BlocklistSet.from_mapping({"a": {"terms": ["alpha"]}, "b": {"patterns": ["bet+a"]}})
    assert s.match("alpha and betttta", ["a", "b"]) == ["a", "b"]
    assert s.match("nothing here", ["a", "b"]) == []
    with pytest.raises(InvalidInput):
        s.match("alpha", ["missing"])


def test_one_time_budget_per_text_across_all_patterns() -> None:
    """Each pattern alone finishes quickly; together they outlast the text's budget, which fails
    closed. (One timeout per pattern once let 100 of them hold a text for seconds.)"""
    lists = BlocklistSet.from_mapping({"evil": {"patterns": ["(a|aa)+b"] * 100}})
    with pytest.raises(BlocklistTimeout):
        lists.match("a" * 18, ["evil"], budget_s=0.02)
    assert lists.match("a benign text", ["evil"], budget_s=0.02) == []


def test_terms_are_compared_in_their_normalised_form() -> None:
    """Texts reach the blocklists NFKC-normalised without format characters; terms are stored as
    written and normalised the same way, so a fullwidth or zero-width term still matches."""
    bl = Blocklist.build("w", terms=[fullwidth("quuxblorp"), "zero\u200bwidth", "Cafe\u0301"])
    assert bl.terms == (fullwidth("quuxblorp"), "zero\u200bwidth", "Cafe\u0301")  # shown as written
    assert bl.matches("say quuxblorp now")
    assert bl.matches("a zerowidth term")
    assert bl.matches("the caf\u00e9 opens")  # composed form


def test_a_large_term_list_matches_exactly_like_a_plain_alternation() -> None:
    """Terms compile into a prefix tree (an alternation of 10,000 terms took seconds per text)."""
    import random
    import string

    rng = random.Random(7)
    terms = sorted({"".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(3000)})
    terms += ["new york", "c++", "a.b", "ab", "abc", "abcd"]
    bl = Blocklist.build("big", terms=terms)
    alternation = "|".join(regex.escape(t) for t in sorted(terms, key=len, reverse=True))
    plain = regex.compile(rf"(?<!\w)(?:{alternation})(?!\w)", regex.IGNORECASE | regex.V1)
    words = [*rng.sample(terms, 50), "zzzzzzzzzz", "newyork", "abcde", "c+", "a-b", "C++", "a.bc", "New York"]
    texts = [f"{pre}{w}{post}" for w in words for pre in ("say ", "say x", "") for post in (" now", "s", "!", "")]
    hits = 0
    for text in texts:
        assert bl.matches(text) == bool(plain.search(text)), text
        hits += bl.matches(text)
    assert 0 < hits < len(texts)
    assert bl.matches("I love New   York") is False and bl.matches("I love NEW YORK!")


def test_caps_per_deployment_count_every_named_list() -> None:
    lists = BlocklistSet.from_mapping({
        "a": {"patterns": [f"a{i}" for i in range(60)]},
        "b": {"patterns": [f"b{i}" for i in range(40)]},
        "c": {"patterns": ["c"]},
        "long": {"patterns": ["x" * 500] * 21},
        "terms": {"terms": [f"t{i}" for i in range(10_000)]},
        "more": {"terms": ["t-extra"]},
    })
    lists.check_caps(["a", "b"])  # 100 regular expressions: the cap
    lists.check_caps(["terms"])
    for names, words in ((["a", "b", "c"], "100 regular"), (["long"], "characters"), (["terms", "more"], "terms")):
        with pytest.raises(InvalidInput, match=words) as info:
            lists.check_caps(names)
        assert info.value.field == "blocklists"
