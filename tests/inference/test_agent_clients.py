"""Tools, structured outputs, logprobs and the Responses API, through clients nobody here wrote:
the official `openai` client, `langchain-openai` and `azure-ai-inference`, against the real
bundled SmolLM2 on a real server.

SmolLM2-135M's answers are silly; what is asserted is the shape the clients rely on, the
grammar's guarantee (arguments and structured answers that stop always parse and validate)
and that a round trip through tool results works.

LangChain's `ChatOpenAI` imports `tiktoken`, which downloads its encodings on first use (no
download is possible here). Only token counting reaches it (`get_num_tokens*`), never
`invoke`; the LangChain tests make that certain by having tiktoken's encoding loaders raise,
so a path that reached them would fail the test instead of hanging on the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.support.inference import ModelServer

pytestmark = pytest.mark.chat_model  # the `models` server: SmolLM2 and MiniLM in workers

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                   "unit": {"enum": ["celsius", "fahrenheit"]}},
                  "required": ["city", "unit"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                            "parameters": WEATHER_PARAMS, "strict": True}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone.",
                                         "parameters": {"type": "object", "properties": {
                                             "zone": {"type": "string", "maxLength": 24}}, "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int
    colour: str | None = Field(max_length=12)


@pytest.fixture
def client(models: ModelServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{models.url}/v1", api_key=models.chat_key, max_retries=0, timeout=180) as c:
        yield c


def check_call(call, tools: dict[str, dict]) -> dict:
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tools[call.function.name])
    return args


# -- tool calls ------------------------------------------------------------------------------------

def test_tool_round_trip(client: openai.OpenAI):
    r = client.chat.completions.create(model="chat", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                       max_tokens=80, temperature=0)
    (choice,) = r.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    params = {"get_weather": WEATHER_PARAMS, "get_time": TIME["function"]["parameters"]}
    for call in choice.message.tool_calls:
        check_call(call, params)
    # the test plays the tool, then the model answers from the result
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               *[{"role": "tool", "tool_call_id": c.id, "content": "sunny, 21 degrees"}
                 for c in choice.message.tool_calls]]
    answer = client.chat.completions.create(model="chat", messages=history, tools=[WEATHER, TIME],
                                            tool_choice="none", max_tokens=20, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    alone = client.chat.completions.create(model="chat", messages=ASK, tools=[WEATHER, TIME], tool_choice="none",
                                           max_tokens=1)
    assert answer.usage.prompt_tokens > alone.usage.prompt_tokens + 10  # the call and its result were in the prompt


def test_tool_round_trip_streamed(client: openai.OpenAI):
    chunks = list(client.chat.completions.create(
        model="chat", messages=ASK, tools=[WEATHER, TIME], max_tokens=80, temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, *rest = deltas
    assert first.index == 0 and first.id.startswith("call_") and first.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    arguments = first.function.arguments + "".join(d.function.arguments for d in rest)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    assert not any(c.choices[0].delta.content for c in chunks)
    call = {"id": first.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    history = [*ASK, {"role": "assistant", "tool_calls": [call]},
               {"role": "tool", "tool_call_id": first.id, "content": "rain"}]
    answer = list(client.chat.completions.create(model="chat", messages=history, max_tokens=12, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in answer)
    assert answer[-1].choices[0].finish_reason in ("stop", "length")


def test_parallel_tool_calls_false_makes_exactly_one_call(client: openai.OpenAI):
    r = client.chat.completions.create(model="chat", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=80, seed=5)
    assert r.choices[0].finish_reason == "tool_calls" and len(r.choices[0].message.tool_calls) == 1


def test_auto_may_answer_in_text_and_a_cut_answer_says_length(client: openai.OpenAI):
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Say hi."}],
                                       tools=[WEATHER], max_tokens=3, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "length"  # 3 tokens never finish a call nor a greeting of this model
    assert (choice.message.content is not None) != bool(choice.message.tool_calls)


# -- structured outputs ---------------------------------------------------------------------------------

def test_beta_parse_with_a_pydantic_model(client: openai.OpenAI):
    r = client.beta.chat.completions.parse(model="chat", messages=[{"role": "user", "content": "Invent a person."}],
                                           response_format=Person, max_tokens=80, temperature=0)
    assert r.choices[0].finish_reason == "stop"
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and len(person.name) <= 20


def test_json_schema_outside_the_subset_is_400_naming_the_feature(client: openai.OpenAI):
    schema = {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}},
              "required": ["when"], "additionalProperties": False}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chat", messages=ASK, max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}})
    assert "'format'" in err.value.message and err.value.param == "response_format.json_schema.schema"
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chat", messages=ASK, max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "t", "schema": loose, "strict": True}})
    assert "additionalProperties" in err.value.message


# -- logprobs ------------------------------------------------------------------------------------------

def test_logprobs_on_chat_streamed_and_not(client: openai.OpenAI):
    kw = {"model": "chat", "messages": ASK, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    r = client.chat.completions.create(**kw)
    tokens = r.choices[0].logprobs.content
    assert len(tokens) == r.usage.completion_tokens and "".join(t.token for t in tokens) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 and bytes(t.bytes).decode() == t.token for t in tokens)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in tokens]
    for c in chunks:  # each chunk's logprobs are those of its own text
        if c.choices and c.choices[0].delta.content:
            assert "".join(t.token for t in c.choices[0].logprobs.content) == c.choices[0].delta.content


def test_logprobs_on_completions(client: openai.OpenAI):
    r = client.completions.create(model="chat", prompt="The sea is", max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 5
    assert all(len(top) <= 3 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=ASK, max_tokens=2, logprobs=True, top_logprobs=21)


# -- Responses API --------------------------------------------------------------------------------------

def test_responses_text(client: openai.OpenAI):
    r = client.responses.create(model="chat", input="Name a colour.", instructions="Be brief.", max_output_tokens=8)
    assert r.object == "response" and r.id.startswith("resp_") and r.store is False
    assert r.output_text and r.status in ("completed", "incomplete")
    assert r.usage.output_tokens <= 8 and r.usage.input_tokens > 3
    events = list(client.responses.create(model="chat", input="Name a colour.", max_output_tokens=8, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].response.output_text == text


def test_responses_function_tools_round_trip(client: openai.OpenAI):
    tool = {"type": "function", "name": "get_weather", "description": "Current weather in a city.",
            "parameters": WEATHER_PARAMS}
    r = client.responses.create(model="chat", input="Weather in Paris?", tools=[tool], tool_choice="required",
                                max_output_tokens=80, temperature=0)
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and r.status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_PARAMS)
    follow = [{"role": "user", "content": "Weather in Paris?"}, *[c.model_dump(exclude_none=True) for c in calls],
              *[{"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls]]
    answer = client.responses.create(model="chat", input=follow, tools=[tool], tool_choice="none",
                                     max_output_tokens=10)
    assert answer.output_text
    streamed = list(client.responses.create(model="chat", input="Weather in Paris?", tools=[tool],
                                            tool_choice="required", max_output_tokens=80, temperature=0, stream=True))
    done = [e for e in streamed if e.type == "response.function_call_arguments.done"]
    deltas = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    assert done and done[0].arguments.startswith(deltas[:10]) and json.loads(done[0].arguments)


def test_responses_structured_output(client: openai.OpenAI):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12},
                                               "hex": {"type": "boolean"}},
              "required": ["colour", "hex"], "additionalProperties": False}
    r = client.responses.create(model="chat", input="Name a colour.", max_output_tokens=40, temperature=0,
                                text={"format": {"type": "json_schema", "name": "colour", "schema": schema,
                                                 "strict": True}})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)


def test_responses_are_never_stored(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="chat", input="hi", store=True, max_output_tokens=2)
    assert err.value.param == "store" and "never stores" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="chat", input="hi", previous_response_id="resp_abc", max_output_tokens=2)
    assert err.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_0123")


# -- LangChain -----------------------------------------------------------------------------------------

@pytest.fixture
def langchain_chat(models: ModelServer, monkeypatch: pytest.MonkeyPatch):
    import tiktoken
    from langchain_openai import ChatOpenAI

    def no_download(*args, **kwargs):
        raise AssertionError("tiktoken was asked for an encoding (it would download it)")

    monkeypatch.setattr(tiktoken, "get_encoding", no_download)
    monkeypatch.setattr(tiktoken, "encoding_for_model", no_download)
    return ChatOpenAI(model="chat", base_url=f"{models.url}/v1", api_key=models.chat_key, max_retries=0,
                      temperature=0, max_tokens=80, timeout=180)


def test_langchain_bind_tools(langchain_chat):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return "sunny"

    message = langchain_chat.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"].startswith("call_")


def test_langchain_with_structured_output(langchain_chat):
    person = langchain_chat.with_structured_output(Person).invoke("Invent a person.")
    assert isinstance(person, Person)


# -- Azure AI Inference ----------------------------------------------------------------------------------

def test_azure_tools_and_json_schema(models: ModelServer):
    from azure.ai.inference import ChatCompletionsClient
    from azure.ai.inference.models import (
        ChatCompletionsNamedToolChoice,
        ChatCompletionsNamedToolChoiceFunction,
        ChatCompletionsToolDefinition,
        FunctionDefinition,
        JsonSchemaFormat,
        UserMessage,
    )
    from azure.core.credentials import AzureKeyCredential

    with ChatCompletionsClient(endpoint=f"{models.url}/deployments/chat",
                               credential=AzureKeyCredential(models.chat_key)) as azure:
        tool = ChatCompletionsToolDefinition(function=FunctionDefinition(
            name="get_weather", description="Current weather in a city.", parameters=WEATHER_PARAMS))
        r = azure.complete(messages=[UserMessage("Weather in Paris?")], tools=[tool], max_tokens=80, temperature=0,
                           tool_choice=ChatCompletionsNamedToolChoice(
                               function=ChatCompletionsNamedToolChoiceFunction(name="get_weather")))
        assert r.choices[0].finish_reason == "tool_calls"
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
        updates = list(azure.complete(messages=[UserMessage("Weather in Paris?")], tools=[tool], max_tokens=80,
                                      temperature=0, stream=True, tool_choice=ChatCompletionsNamedToolChoice(
                                          function=ChatCompletionsNamedToolChoiceFunction(name="get_weather"))))
        pieces = [u.choices[0].delta.tool_calls[0] for u in updates if u.choices and u.choices[0].delta.tool_calls]
        assert pieces[0].function.name == "get_weather" and pieces[0].id.startswith("call_")
        jsonschema.validate(json.loads("".join(p.function.arguments or "" for p in pieces)), WEATHER_PARAMS)
        assert [u.choices[0].finish_reason for u in updates if u.choices and u.choices[0].finish_reason] == [
            "tool_calls"]
        schema = Person.model_json_schema()
        strict = {**schema, "required": list(schema["properties"]), "additionalProperties": False}
        r = azure.complete(messages=[UserMessage("Invent a person.")], max_tokens=80, temperature=0,
                           response_format=JsonSchemaFormat(name="person", schema=strict, strict=True))
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), strict)


# -- the same under the default content filter -------------------------------------------------------

@pytest.fixture
def guarded(models: ModelServer) -> Iterator[str]:
    """A serverless deployment of the same model (the same pool) with the default filter on, buffered,
    in a workspace of its own (the package's other modules count the default workspace's deployments)."""
    from tests.support.inference import create_deployment
    from tests.support.tenants import make_tenant, ok

    owner = make_tenant(models.server, roles=("owner",)).keys["owner"]
    dep = create_deployment(models.server, "guarded", "SmolLM2-135M-Instruct", key=owner, type="serverless")
    with models.server.client(owner) as c:
        cfg = ok(c.get("/api/v1/deployments/guarded/content-filter")).json()
        ok(c.put("/api/v1/deployments/guarded/content-filter", json={**cfg, "enabled": True, "streaming": "buffered"}))
        yield dep["keys"]["primary"]
        ok(c.delete("/api/v1/deployments/guarded"), 204)


def test_tool_calls_and_logprobs_under_the_buffered_filter(models: ModelServer, guarded: str):
    with openai.OpenAI(base_url=f"{models.url}/v1", api_key=guarded, max_retries=0, timeout=180) as c:
        chunks = list(c.chat.completions.create(model="guarded", messages=ASK, tools=[WEATHER], stream=True,
                                                tool_choice="required", parallel_tool_calls=False, max_tokens=80,
                                                temperature=0))
        calls = [ch.choices[0].delta.tool_calls[0] for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls]
        assert calls[0].function.name == "get_weather"
        jsonschema.validate(json.loads("".join(d.function.arguments or "" for d in calls)), WEATHER_PARAMS)
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [
            "tool_calls"]
        assert chunks[0].model_extra["prompt_filter_results"][0]["content_filter_results"]["jailbreak"] == {
            "filtered": False, "detected": False}
        chunks = list(c.chat.completions.create(model="guarded", messages=ASK, stream=True, max_tokens=40,
                                                temperature=0, logprobs=True, top_logprobs=1))
        # released segment by segment: a token's logprob never leaves before all of its text did
        # (one that straddles a segment's end leaves with the next segment), and in the end all do
        text, scored = "", ""
        for ch in chunks:
            if ch.choices and (ch.choices[0].delta.content or ch.choices[0].logprobs):
                text += ch.choices[0].delta.content or ""
                scored += "".join(t.token for t in ch.choices[0].logprobs.content)
                assert text.startswith(scored)
        assert scored == text and text
