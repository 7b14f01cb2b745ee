"""Grammars and logprobs in the llama.cpp runtime, in this process, on the bundled SmolLM2.

The property the API promises: for any schema in the supported subset, a strict answer that the
model ends by itself (finish_reason "stop") parses and validates. SmolLM2-135M writes silly
values; the grammar is what makes them valid."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.errors import InvalidInput
from modelport.inference import tools
from modelport.inference.grammar import json_schema_gbnf
from modelport.runtimes.base import GenerateRequest, ModelSpec
from modelport.runtimes.llamacpp import LlamaCppRuntime
from tests.support.models import SMOLLM2_GGUF

pytestmark = pytest.mark.chat_model  # loads SmolLM2 in this process

ASK = [{"role": "user", "content": "Describe a person in JSON."}]


@pytest.fixture(scope="module")
def runtime() -> Iterator[LlamaCppRuntime]:
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=2048, threads=1))
    yield rt
    rt.close()


def run(rt: LlamaCppRuntime, **kw) -> tuple[str, str, list]:
    deltas = list(rt.generate(GenerateRequest(**kw), threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas


# -- the property ------------------------------------------------------------------------------

NAMES = st.sampled_from(["name", "age", "tags", "city", "ok", "score", "kind", "note"])
LEAVES = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 12)),
    st.just({"type": "integer"}), st.just({"type": "number"}), st.just({"type": "boolean"}),
    st.just({"type": "null"}), st.just({"type": ["string", "null"], "maxLength": 8}),
    st.lists(st.one_of(st.text("abc xyz", max_size=6), st.integers(-5, 5), st.booleans()), min_size=1, max_size=4,
             unique=True).map(lambda vs: {"enum": vs}),
)


def _object(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.dictionaries(NAMES, children, min_size=1, max_size=3).map(
        lambda props: {"type": "object", "properties": props, "required": list(props), "additionalProperties": False})


SCHEMAS = _object(st.recursive(LEAVES, lambda inner: st.one_of(
    _object(inner),
    st.builds(lambda item, n: {"type": "array", "items": item, "maxItems": n}, inner, st.integers(0, 3)),
    inner.map(lambda s: {"anyOf": [s, {"type": "null"}]}),
), max_leaves=6))


@pytest.mark.slow  # about 40 s of CPU: a dozen constrained generations
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(schema=SCHEMAS, seed=st.integers(0, 2**31 - 1))
def test_strict_answers_always_validate(runtime: LlamaCppRuntime, schema: dict, seed: int):
    jsonschema.Draft202012Validator.check_schema(schema)
    grammar = json_schema_gbnf(schema, strict=True)
    text, finish, deltas = run(runtime, messages=ASK, grammar=grammar, max_tokens=160, seed=seed, temperature=1.0)
    if finish == "stop":
        jsonschema.validate(json.loads(text), schema)
    else:  # cut by max_tokens, never anything else
        assert deltas[-1].usage.completion_tokens == 160


def test_a_fixed_schema_finishes_and_validates(runtime: LlamaCppRuntime):
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "kind"],
              "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"},
                             "kind": {"enum": ["friend", "colleague"]}}}
    text, finish, _ = run(runtime, messages=ASK, grammar=json_schema_gbnf(schema, strict=True), max_tokens=80,
                          temperature=0)
    assert finish == "stop"
    jsonschema.validate(json.loads(text), schema)
    assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)  # compact


def test_a_forced_tool_call_names_the_function_and_its_arguments_validate(runtime: LlamaCppRuntime):
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "unit": {"enum": ["C", "F"]}},
              "required": ["city", "unit"], "additionalProperties": False}
    offered = tools.parse_tools([{"type": "function", "function": {"name": "get_weather", "parameters": params}},
                                 {"type": "function", "function": {"name": "get_time"}}])
    grammar = tools.grammar_for(offered, "get_weather", parallel=False, text_schema=None)
    text, finish, _ = run(runtime, messages=[{"role": "user", "content": "Weather in Paris?"}], grammar=grammar,
                          tools=[t.wire() for t in offered], max_tokens=80, temperature=0)
    assert finish == "stop"
    (call,) = json.loads(text)["tool_calls"]
    assert call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], params)


def test_a_grammar_llama_cpp_cannot_parse_is_refused_not_a_crash(runtime: LlamaCppRuntime):
    with pytest.raises(InvalidInput, match="grammar"):
        run(runtime, messages=ASK, grammar="root ::= (", max_tokens=4)


# -- logprobs ------------------------------------------------------------------------------------

def test_logprobs_cover_every_token_with_its_top_alternatives(runtime: LlamaCppRuntime):
    text, _, deltas = run(runtime, messages=ASK, max_tokens=12, temperature=0, logprobs=3)
    scored = [t for d in deltas for t in d.logprobs or ()]
    assert len(scored) == deltas[-1].usage.completion_tokens == 12
    assert b"".join(t.token for t in scored).decode() == text
    for t in scored:
        assert len(t.top) == 3 and t.logprob <= 0
        assert [lp for _, lp in t.top] == sorted((lp for _, lp in t.top), reverse=True)
        assert t.top[0][0] == t.token and t.top[0][1] == pytest.approx(t.logprob)  # greedy: the best one
    # 0 alternatives: each token's own logprob only
    _, _, deltas = run(runtime, messages=ASK, max_tokens=3, temperature=0, logprobs=0)
    assert all(t.top == () for d in deltas for t in d.logprobs or ())


def test_a_stop_sequence_takes_its_tokens_logprobs_with_it(runtime: LlamaCppRuntime):
    """The stop sequence is never sent, and neither are its tokens' logprobs: what is reported
    spells exactly the text."""
    text, finish, deltas = run(runtime, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, logprobs=1, stop=[" 6"])
    assert finish == "stop" and text == " 5,"
    scored = [t for d in deltas for t in d.logprobs or ()]
    assert b"".join(t.token for t in scored).decode() == text
    # SmolLM2 writes " 6" as " " then "6": the stop's two tokens are sampled and counted, not reported
    assert deltas[-1].usage.completion_tokens == len(scored) + 2
