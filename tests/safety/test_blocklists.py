"""Custom blocklists: terms on word boundaries, case-insensitive; regexes bounded and timed."""

from __future__ import annotations

import pytest

from modelport.errors import InvalidInput
from modelport.safety.blocklists import Blocklist, BlocklistSet, BlocklistTimeout


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
