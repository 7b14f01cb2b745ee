"""A text already screened is not classified again (issue 15): the keyed-hash analysis cache."""

from __future__ import annotations

import pickle
from asyncio import run
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.safety.backends.base import CATEGORIES, Analysis
from modelport.safety.backends.minilm import MiniLMBackend
from modelport.safety.cache import AnalysisCache, CachedBackend
from modelport.safety.config import ContentFilterConfig
from modelport.safety.screening import SafetyUnavailable, Screener

THREAT = "I know where you live. Accidents happen to people who talk to the police, so keep your mouth shut."


class Counting:
    """The real backend, counting the texts that reach it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = "counting"
        self.texts = 0
        self.calls = 0

    async def analyze(self, texts: list[str]) -> list[Analysis]:
        self.calls += 1
        self.texts += len(texts)
        return await self.inner.analyze(texts)  # type: ignore[attr-defined]


def test_a_text_screened_twice_is_classified_once_with_the_same_verdict(minilm: MiniLMBackend) -> None:
    counting = Counting(minilm)
    screener = Screener(CachedBackend(counting), ContentFilterConfig())
    first = run(screener.screen_prompt(THREAT))
    second = run(screener.screen_prompt(THREAT))
    assert first.filtered and "violence" in first.filtered_reasons
    assert second == first
    assert counting.texts == 1
    # the completion direction applies its own thresholds to the same cached analysis
    assert run(screener.screen_completion(THREAT)).filtered
    assert counting.texts == 1


def test_texts_with_the_same_screening_form_share_one_entry(minilm: MiniLMBackend) -> None:
    counting = Counting(minilm)
    screener = Screener(CachedBackend(counting), ContentFilterConfig())
    plain = run(screener.screen_prompt(THREAT))
    hidden = run(screener.screen_prompt(THREAT.replace("live", "li\u200bve")))  # zero-width space inside
    assert hidden.results == plain.results and counting.texts == 1


def test_a_batch_sends_only_unseen_texts_and_each_once(minilm: MiniLMBackend) -> None:
    counting = Counting(minilm)
    backend = CachedBackend(counting)
    run(backend.analyze(["hello there"]))
    out = run(backend.analyze(["hello there", THREAT, THREAT, "the weather is nice"]))
    assert counting.texts == 1 + 2 and counting.calls == 2
    assert out[1] == out[2] and out[1].severities["violence"] in ("medium", "high")
    assert out[0] == run(minilm.analyze(["hello there"]))[0]


def test_the_cache_keeps_no_text_and_its_key_is_per_process(minilm: MiniLMBackend) -> None:
    cache = AnalysisCache()
    backend = CachedBackend(minilm, cache)
    secret = "my tax id is 4711-0815 and my dog is called Bartholomew"
    run(backend.analyze([secret]))
    assert len(cache) == 1
    dumped = pickle.dumps(list(cache._entries.items()))
    for part in ("4711-0815", "Bartholomew", "tax id"):
        assert part.encode() not in dumped
    (digest,) = cache._entries
    assert len(digest) == 32
    # another cache (another process) keys the same text differently: no digest can be
    # checked against a guessed text without the key, which only this process holds
    assert AnalysisCache().digest(secret) != cache.digest(secret)


def test_the_cache_is_bounded_and_forgets_the_least_recently_used(minilm: MiniLMBackend) -> None:
    counting = Counting(minilm)
    backend = CachedBackend(counting, AnalysisCache(max_entries=2))
    for text in ("one apple", "two pears", "one apple", "three plums"):  # "two pears" is the oldest used
        run(backend.analyze([text]))
    assert len(backend.cache) == 2 and counting.texts == 3
    run(backend.analyze(["one apple"]))
    assert counting.texts == 3
    run(backend.analyze(["two pears"]))
    assert counting.texts == 4


def test_zero_entries_turns_the_cache_off(minilm: MiniLMBackend) -> None:
    counting = Counting(minilm)
    backend = CachedBackend(counting, AnalysisCache(max_entries=0))
    run(backend.analyze(["same text"]))
    run(backend.analyze(["same text"]))
    assert counting.texts == 2 and len(backend.cache) == 0
    with pytest.raises(ValueError):
        AnalysisCache(max_entries=-1)


def test_a_failing_backend_still_fails_closed_and_nothing_is_cached(tmp_path: Path) -> None:
    backend = CachedBackend(MiniLMBackend(model_dir=tmp_path))  # no model there: cannot load
    screener = Screener(backend, ContentFilterConfig())
    for _ in range(2):
        with pytest.raises(SafetyUnavailable):
            run(screener.screen_prompt("hello"))
    assert len(backend.cache) == 0


class ByLength:
    """A stand-in classifier for the property test: its analysis is a function of the text."""

    name = "by-length"

    async def analyze(self, texts: list[str]) -> list[Analysis]:
        levels = ("safe", "low", "medium", "high")
        return [Analysis(severities={c: levels[(len(t) + i) % 4] for i, c in enumerate(CATEGORIES)},
                         jailbreak=len(t) % 5 == 0) for t in texts]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "bb", "ccc", "dddd", "eeeee", "ff", "g\u200b"]), min_size=1,
                         max_size=4), min_size=1, max_size=12),
       st.integers(min_value=0, max_value=4))
def test_any_sequence_of_batches_gives_the_uncached_answers_within_the_bound(batches: list[list[str]],
                                                                              bound: int) -> None:
    plain = ByLength()
    cached = CachedBackend(plain, AnalysisCache(max_entries=bound))
    for batch in batches:
        assert run(cached.analyze(batch)) == run(plain.analyze(batch))
        assert len(cached.cache) <= bound
