"""JSON Schema -> GBNF (the supported subset, strict rules, refusals that name the feature) and
the reader that turns a constrained answer back into OpenAI tool calls, however it is split.

No model here: tests/runtimes/test_structured_outputs.py runs these grammars in llama.cpp."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.errors import InternalError, InvalidInput
from modelport.inference import tools
from modelport.inference.grammar import json_schema_gbnf, literal
from modelport.runtimes import tool_prompt


def strict_object(**props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


@pytest.mark.parametrize(("schema", "named"), [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}, "required": ["a"],
      "additionalProperties": False}, "pattern"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "date-time"}}, "required": ["a"],
      "additionalProperties": False}, "format"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 3}}, "required": ["a"],
      "additionalProperties": False}, "minimum"),
    ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}, "required": ["a"],
      "additionalProperties": False}, "oneOf"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, "additionalProperties"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": [],
      "additionalProperties": False}, "property 0 is not"),
    ({"type": "object", "properties": {}, "required": [], "additionalProperties": False,
      "secret-canary-key": 1}, "not a supported JSON Schema keyword"),
    ({"type": "array", "items": {"type": "string"}}, "root"),
    ({"type": "object", "properties": {"a": {"type": "array"}}, "required": ["a"],
      "additionalProperties": False}, "items"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"], "additionalProperties": False,
      "$defs": {"A": {"$ref": "#/$defs/A"}}}, "refers back to itself"),
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/x"}}, "required": ["a"],
      "additionalProperties": False}, "$ref"),
])
def test_strict_refusals_name_the_feature(schema: dict, named: str):
    with pytest.raises(InvalidInput) as err:
        json_schema_gbnf(schema, strict=True)
    assert named in err.value.message and err.value.field == "response_format"
    # what the caller wrote (property names, unknown keys, $defs names) is never repeated (P1)
    assert not any(word in err.value.message for word in ("'a'", "canary", "https://", "#/$defs/A"))


def test_non_strict_accepts_optional_properties_and_open_objects():
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["b"]}
    text = json_schema_gbnf(schema, strict=False)
    assert text.startswith("root ::= ") and '"\\"b\\":"' in text


def test_hostile_schemas_are_refused_not_expanded():
    deep: dict = {"type": "string"}
    for _ in range(60):
        deep = strict_object(x=deep)
    with pytest.raises(InvalidInput, match="deeper"):
        json_schema_gbnf(deep, strict=True)
    wide = strict_object(**{f"p{i}": {"enum": [f"v{i}-{j}" for j in range(3)]} for i in range(2500)})
    with pytest.raises(InvalidInput, match="too large"):
        json_schema_gbnf(wide, strict=True)
    with pytest.raises(InvalidInput, match="maxItems"):
        json_schema_gbnf(strict_object(a={"type": "array", "items": {"type": "string"}, "maxItems": 10**9}),
                         strict=True)


def test_literal_escapes_everything_gbnf_would_read():
    assert literal('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert literal("\x01") == '"\\x01"'


# -- tools and tool_choice -----------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": strict_object(city={"type": "string"}), "strict": True}}


def test_tool_choice_forms():
    offered = tools.parse_tools([WEATHER])
    assert tools.parse_choice(None, offered) == "auto"
    assert tools.parse_choice(None, []) is None
    assert tools.parse_choice("none", offered) is None
    assert tools.parse_choice("required", offered) == "required"
    assert tools.parse_choice({"type": "function", "function": {"name": "get_weather"}}, offered) == "get_weather"
    assert tools.parse_choice({"type": "function", "name": "get_weather"}, offered) == "get_weather"  # Responses
    for bad in ({"type": "function", "function": {"name": "other"}}, "sometimes", 3):
        with pytest.raises(InvalidInput):
            tools.parse_choice(bad, offered)
    with pytest.raises(InvalidInput, match="needs 'tools'"):
        tools.parse_choice("required", [])


@pytest.mark.parametrize(("raw", "named"), [
    ([{"type": "retrieval"}], "function tools"),
    ([{"type": "function", "function": {"name": "a b"}}], "name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "parameters"),
    ([WEATHER, WEATHER], "unique"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "x"}}}}}], "pattern"),
])
def test_bad_tools_are_400_naming_the_field(raw: list, named: str):
    with pytest.raises(InvalidInput) as err:
        offered = tools.parse_tools(raw)
        tools.grammar_for(offered, "auto", parallel=True, text_schema=None)
    assert named in err.value.message and (err.value.field or "").startswith("tools")


def test_grammar_offers_only_the_named_function():
    two = [WEATHER, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    named = tools.grammar_for(tools.parse_tools(two), "get_time", parallel=True, text_schema=None)
    assert "get_time" in named and "get_weather" not in named
    auto = tools.grammar_for(tools.parse_tools(two), "auto", parallel=False, text_schema=None)
    assert "get_time" in auto and "get_weather" in auto and "text" in auto


# -- reading the answer back -----------------------------------------------------------------

CALLS = '{"tool_calls":[{"name":"get_weather","arguments":{"city":"Pa\\"ris}"}},{"name":"f","arguments":{}}]}'


def read(chunks: list[str], calls: bool = True) -> tuple[list[tools.Piece], tools.AnswerReader]:
    reader = tools.AnswerReader(calls)
    pieces = [p for c in chunks for p in reader.feed(c)] + reader.finish()
    return pieces, reader


def assemble(pieces: list[tools.Piece]) -> tuple[str, list[tuple[str, str]]]:
    text, calls = "", []
    for p in pieces:
        if isinstance(p, tools.Content):
            text += p.text
        elif isinstance(p, tools.CallStart):
            assert p.index == len(calls) and p.id.startswith("call_")
            calls.append((p.name, ""))
        else:
            name, args = calls[p.index]
            calls[p.index] = (name, args + p.text)
    return text, calls


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(CALLS)), max_size=12))
def test_calls_read_the_same_however_the_answer_is_split(cuts: list[int]):
    bounds = sorted(set([0, *cuts, len(CALLS)]))
    chunks = [CALLS[a:b] for a, b in itertools.pairwise(bounds)]
    pieces, reader = read(chunks)
    text, calls = assemble(pieces)
    assert reader.called and text == ""
    assert [(n, json.loads(a)) for n, a in calls] == [("get_weather", {"city": 'Pa"ris}'}), ("f", {})]


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda t: not t.startswith("{")), st.integers(0, 40))
def test_plain_text_is_content_and_held_only_while_it_could_be_a_call(text: str, cut: int):
    pieces, reader = read([text[:cut], text[cut:]])
    assert assemble(pieces) == (text, []) and not reader.called
    # a prefix of the call marker is held until the answer ends, then released as content
    pieces, _ = read(['{"tool_'])
    assert assemble(pieces) == ('{"tool_', [])


def test_a_call_that_breaks_its_grammar_is_our_bug():
    with pytest.raises(InternalError):
        read(['{"tool_calls":[{"nam":'])


def test_tool_choice_none_content_is_never_read_as_calls():
    pieces, reader = read([CALLS], calls=False)
    assert assemble(pieces) == (CALLS, []) and not reader.called


# -- how tools reach the model -----------------------------------------------------------------

PLAIN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "<|im_start|>assistant\n")
TOOL_TEMPLATE = ("{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}"
                 "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                 "{% for c in m.get('tool_calls') or [] %}[{{ c.function.name }} {{ c.function.arguments | tojson }}]"
                 "{% endfor %}\n{% endfor %}")
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


def test_fallback_prompt_writes_tools_calls_and_results_as_text():
    assert not tool_prompt.template_renders_tools(PLAIN_TEMPLATE)
    messages, for_template = tool_prompt.prepare(HISTORY, [WEATHER], PLAIN_TEMPLATE)
    assert for_template is None
    system, _user, assistant, result = messages
    assert system["role"] == "system" and '"name":"get_weather"' in system["content"]
    assert tool_prompt.ANSWER_FORMAT in system["content"]
    assert assistant == {"role": "assistant", "content": '{"tool_calls":[{"name":"get_weather","arguments":'
                                                         '{"city":"Paris"}}]}'}
    assert result == {"role": "user", "content": "Result of get_weather: sunny"}
    assert all(set(m) <= {"role", "content"} for m in messages)


def test_a_tool_aware_template_gets_the_tools_itself():
    assert tool_prompt.template_renders_tools(TOOL_TEMPLATE)
    messages, for_template = tool_prompt.prepare(HISTORY, [WEATHER], TOOL_TEMPLATE)
    assert for_template == [WEATHER]
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # an object for the template
    assert messages[3]["role"] == "tool"


# -- what the content filter screens ---------------------------------------------------------------

def test_every_text_the_caller_wrote_into_tools_and_calls_is_screened():
    from modelport.inference.filtering import prompt_text

    words = [f"w{i}x" for i in range(9)]
    tool = {"type": "function", "function": {"name": "get_" + words[0], "description": words[1], "parameters": {
        "type": "object", "title": words[2], "properties": {words[3]: {"type": "array", "items": {
            "$ref": "#/$defs/Deep"}}, "unit": {"enum": [words[4], 3], "default": words[5]}},
        "$defs": {"Deep": {"type": "string", "description": words[6], "examples": [words[7]]}}}}}
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {
                    "name": "get_x", "arguments": json.dumps({"nested": [{"k": words[8]}]})}}]},
                {"role": "tool", "tool_call_id": "c", "content": "the result"}]
    text = prompt_text(messages, [tool])
    assert all(w in text for w in words) and "the result" in text
    # as texts, not JSON: the classifier reads JSON syntax as a prompt injection
    assert "{" not in text and '"type"' not in text


# Review findings H1 and M2 (2026-12-02): a schema whose grammar makes llama.cpp's work grow
# exponentially, and one whose grammar is too large for the worker request (was a 500).
AMBIGUOUS = {"$defs": {"L": {"anyOf": [{"type": "array", "items": {"$ref": "#/$defs/L"}},
                                       {"type": "array", "maxItems": 1000, "items": {"$ref": "#/$defs/L"}}]}},
             "type": "object", "properties": {"a": {"$ref": "#/$defs/L"}}, "required": ["a"]}


@pytest.mark.parametrize("schema", [
    AMBIGUOUS,
    {"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}},
               {"type": "object", "properties": {"b": {"type": "string"}}}]},
    {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"anyOf": [{"type": "null"}, {"type": "array"}]}]},
])
def test_anyof_alternatives_that_can_both_nest_are_refused(schema: dict) -> None:
    with pytest.raises(InvalidInput, match=r"can both be an (array|object)"):
        json_schema_gbnf(schema, strict=False)


def test_nullable_and_primitive_unions_stay_accepted() -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["a", "b", "c"], "properties": {
        "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "b": {"anyOf": [{"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
                        {"type": "null"}]},
        "c": {"anyOf": [{"enum": ["x", "y"]}, {"type": "string"}, {"type": "integer"}]}}}
    assert "root" in json_schema_gbnf(schema, strict=True)


def test_a_schema_whose_grammar_is_too_large_is_400_naming_the_field() -> None:
    schema = {"type": "object", "properties": {"e": {"enum": ['"' * 1000 + str(i) for i in range(1500)]}},
              "required": ["e"]}
    with pytest.raises(InvalidInput, match="larger than 256 KiB") as refused:
        json_schema_gbnf(schema, strict=False, field_name="response_format.json_schema.schema")
    assert refused.value.field == "response_format.json_schema.schema"
