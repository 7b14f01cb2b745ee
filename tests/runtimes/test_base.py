"""The runtime interface helpers and the registry, with the echo runtime as the real backend."""

from __future__ import annotations

import threading

import pytest

from modelport.errors import InvalidInput
from modelport.runtimes.base import GenerateRequest, ModelSpec, StopMatcher, normalise_messages
from modelport.runtimes.echo import EchoRuntime
from modelport.runtimes.registry import available_runtimes, resolve_runtime


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_sequence_split_across_tokens_is_caught_and_not_streamed() -> None:
    assert feed_all(["END"], ["abc E", "N", "D tail"]) == ("abc ", True)
    assert feed_all(["\n\n"], ["one\n", "\ntwo"]) == ("one", True)


def test_stop_matcher_releases_text_that_turned_out_not_to_be_a_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("a ST") == ("a ", False)  # "ST" held back: it may start STOP
    assert matcher.feed("AR") == ("STAR", False)
    assert matcher.flush() == ""
    assert feed_all(["xyz"], ["abc x"]) == ("abc x", False)  # flushed at the end


def test_stop_matcher_picks_the_earliest_of_several_stops() -> None:
    assert feed_all(["b", "a"], ["xxab"]) == ("xx", True)


def test_messages_with_text_parts_are_flattened_and_other_parts_refused() -> None:
    out = normalise_messages([{"role": "user", "content": [{"type": "text", "text": "a"},
                                                           {"type": "text", "text": "b"}]}])
    assert out == [{"role": "user", "content": "ab"}]
    with pytest.raises(InvalidInput) as err:
        normalise_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "secret"}}]}])
    assert "secret" not in err.value.message
    with pytest.raises(InvalidInput):
        normalise_messages([])


def test_registry_finds_builtins_and_module_class_references() -> None:
    assert {"llamacpp", "transformers", "echo"} <= set(available_runtimes())
    assert resolve_runtime("echo") is EchoRuntime
    assert resolve_runtime("modelport.runtimes.echo:EchoRuntime") is EchoRuntime
    with pytest.raises(InvalidInput, match="unknown runtime"):
        resolve_runtime("nope")
    with pytest.raises(InvalidInput, match="cannot be imported"):
        resolve_runtime("modelport.no_such_module:X")
    with pytest.raises(InvalidInput, match="does not name a modelport Runtime"):
        resolve_runtime("modelport.runtimes.base:StopMatcher")


def test_echo_runtime_counts_words_as_tokens_and_honours_limits() -> None:
    runtime = EchoRuntime.load(ModelSpec(model_path="", options={"context_length": 10}))
    cancel = threading.Event()
    messages = [{"role": "user", "content": "one two three"}]
    deltas = list(runtime.generate(GenerateRequest(messages=messages), cancel))
    assert "".join(d.text for d in deltas) == "one two three"
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage.prompt_tokens == runtime.count_tokens(messages=messages) == 4
    deltas = list(runtime.generate(GenerateRequest(messages=messages, max_tokens=5), cancel))
    assert "".join(d.text for d in deltas) == "one two three one two"
    assert (deltas[-1].finish_reason, deltas[-1].usage.completion_tokens) == ("length", 5)
    deltas = list(runtime.generate(GenerateRequest(messages=messages, stop=("three",)), cancel))
    assert ("".join(d.text for d in deltas), deltas[-1].finish_reason) == ("one two ", "stop")
    with pytest.raises(InvalidInput, match="context window of 10"):
        list(runtime.generate(GenerateRequest(prompt=" ".join(["w"] * 10)), cancel))


def test_generate_request_needs_exactly_one_input() -> None:
    with pytest.raises(InvalidInput):
        GenerateRequest()
    with pytest.raises(InvalidInput):
        GenerateRequest(messages=[], prompt="x")
