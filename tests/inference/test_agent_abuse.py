"""Tools, structured outputs, logprobs and /v1/responses as an attacker and a careless client
would use them, on a real server whose deployments run the echo runtime (no model: every
answer is exact) with the content filter on, as in production.

- who may call: no key (401), another workspace's deployment or another deployment's key (404),
  a caller outside a private deployment's ranges (403), a stored response (404, never stored);
- hostile bodies: schemas too deep, too large or self-referencing, too many tools, unknown input
  items: a 400 that names what to fix, before any worker is asked;
- the content filter screens the tool definitions, earlier tool-call arguments and tool results
  the model is shown, on both APIs and on /v1/responses;
- logprobs leave with the text they belong to, also when the buffered filter holds text back;
- a runtime that cannot apply a grammar says so (400) instead of answering unconstrained.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.inference import CHAT_MODEL, create_deployment, wait_state
from tests.support.server import Server, loopback_client, start_server
from tests.support.tenants import Tenant, make_tenant

CANARY = "cnry" + secrets.token_hex(8)
THREAT = f"I am going to find you and kill you and your whole family tonight. {CANARY}"
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                         "parameters": PARAMS}}


@dataclass
class World:
    server: Server
    key: str  # deployment key of `echo`
    private_key: str
    tenant: Tenant


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {"MODELPORT_CONTENT_FILTER_DEFAULT": "on", "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
           "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: "echo"})}
    s = start_server(tmp_path_factory.mktemp("srv") / "home", env_extra=env)
    try:
        key = create_deployment(s, "echo", CHAT_MODEL, wait=False, type="serverless")["keys"]["primary"]
        private = create_deployment(s, "private", CHAT_MODEL, wait=False, type="serverless",
                                    network={"public_access": False, "allowed_ranges": ["127.0.0.1/32"]})
        tenant = make_tenant(s)
        create_deployment(s, "theirs", CHAT_MODEL, key=tenant.keys["owner"], wait=False, type="serverless")
        for name in ("echo", "private"):
            assert wait_state(s, name)["state"] == "succeeded"
        assert wait_state(s, "theirs", key=tenant.keys["owner"])["state"] == "succeeded"
        yield World(server=s, key=key, private_key=private["keys"]["primary"], tenant=tenant)
    finally:
        s.stop()


def call(w: World, path: str, body: dict | None = None, *, key: str | None = "", method: str = "POST",
         address: str | None = None, headers: dict | None = None) -> httpx.Response:
    key = w.key if key == "" else key
    hdrs = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    transport = httpx.HTTPTransport(local_address=address) if address else None
    with loopback_client(base_url=w.server.url, timeout=180, transport=transport) as c:
        return c.request(method, path, json=body, headers=hdrs)


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


# -- who may call ------------------------------------------------------------------------------

def test_responses_who_may_call(w: World):
    body = {"model": "echo", "input": "hello there"}
    assert call(w, "/v1/responses", body).status_code == 200
    assert error(call(w, "/v1/responses", body, key=None), 401)["code"] == "invalid_api_key"
    # a deployment key names only its own deployment; a workspace key never another workspace's
    assert error(call(w, "/v1/responses", {**body, "model": "private"}), 404)["code"] == "model_not_found"
    assert error(call(w, "/v1/responses", {**body, "model": "theirs"}, key=w.server.admin_key), 404)
    assert error(call(w, "/v1/responses", body, key=w.tenant.keys["reader"]), 404)
    # a private deployment answers only its allowed ranges, before the body is read
    ok_body = {**body, "model": "private"}
    assert call(w, "/v1/responses", ok_body, key=w.private_key).status_code == 200
    assert error(call(w, "/v1/responses", ok_body, key=w.private_key, address="127.0.0.2"), 403)


def test_no_response_is_ever_stored_or_retrievable(w: World):
    r = call(w, "/v1/responses", {"model": "echo", "input": "hello there"})
    rid = r.json()["id"]
    assert r.json()["store"] is False
    for method in ("GET", "DELETE"):
        assert error(call(w, f"/v1/responses/{rid}", method=method, key=None), 401)
        err = error(call(w, f"/v1/responses/{rid}", method=method), 404)
        assert "never stores" in err["message"] and rid not in err["message"]
    for field, value in (("store", True), ("previous_response_id", rid)):
        err = error(call(w, "/v1/responses", {"model": "echo", "input": "x", field: value}), 400)
        assert err["param"] == field and "never stores" in err["message"]


# -- hostile bodies ---------------------------------------------------------------------------------

def deep_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"], "additionalProperties": False}
    return schema


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools", "128"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": deep_schema(80)}}]},
     "tools[0].function.parameters", "deeper"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"anyOf": [
            {"$ref": "#/$defs/A"}, {"type": "null"}]}}}}}]}, "tools[0].function.parameters", "refers back"),
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "rm_rf"}}}, "tool_choice", "not in"),
    ({"tools": [TOOL], "stop": ["}"]}, "stop", "stop"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", ""),
    ({"top_logprobs": 2}, "body", "logprobs"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0", "tool_call_id"),
])
def test_hostile_chat_bodies_are_400_naming_the_field(w: World, body: dict, param: str, says: str):
    full = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    err = error(call(w, "/v1/chat/completions", full), 400)
    assert (err["param"] or "").startswith(param) and says in err["message"], err
    assert "extra-parameters" not in err["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"type": "computer_call", "action": {}}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    # Responses function tools are strict unless they say otherwise, as in OpenAI's API
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "string"}}}}]}, "tools[0].function.parameters"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
])
def test_hostile_responses_bodies_are_400(w: World, body: dict, param: str):
    err = error(call(w, "/v1/responses", {"model": "echo", "input": "hi", **body}), 400)
    assert (err["param"] or "").startswith(param), err


def test_unknown_parameters_point_to_the_right_remedy_on_each_api(w: World):
    err = error(call(w, "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "x"}],
                                                 "my_knob": 1}), 400)
    assert err["param"] == "my_knob" and "extra-parameters" not in err["message"]
    r = call(w, "/deployments/echo/chat/completions?api-version=2024-05-01-preview",
             {"messages": [{"role": "user", "content": "x"}], "my_knob": 1}, key=None, headers={"api-key": w.key})
    assert "extra-parameters" in error(r, 400)["message"]


def test_a_runtime_that_cannot_apply_a_grammar_refuses(w: World):
    for body in ({"tools": [TOOL]}, {"response_format": {"type": "json_schema", "json_schema": {
            "name": "t", "schema": PARAMS, "strict": True}}}):
        full = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **body}
        err = error(call(w, "/v1/chat/completions", full), 400)
        assert "grammar" in err["message"] and "echo" in err["message"]


# -- the content filter sees what the model is shown ------------------------------------------------

def history(arguments: str = '{"city":"Paris"}', result: str = "sunny") -> list[dict]:
    return [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": result}]


def assert_blocked(r: httpx.Response) -> None:
    err = error(r, 400)
    assert err["code"] == "content_filter" and err["innererror"]["content_filter_result"]["violence"]["filtered"]
    assert CANARY not in r.text


def test_filter_screens_tool_definitions_arguments_and_results(w: World):
    base = {"model": "echo", "tool_choice": "none", "max_tokens": 4}
    # the benign conversation passes (tool_choice none: the echo needs no grammar)
    assert call(w, "/v1/chat/completions", {**base, "messages": history(), "tools": [TOOL]}).status_code == 200
    threat_tool = {"type": "function", "function": {**TOOL["function"], "description": THREAT}}
    assert_blocked(call(w, "/v1/chat/completions", {**base, "messages": history(), "tools": [threat_tool],
                                                    "tool_choice": "auto"}))
    assert_blocked(call(w, "/v1/chat/completions", {**base, "messages": history(
        arguments=json.dumps({"city": THREAT}))}))
    assert_blocked(call(w, "/v1/chat/completions", {**base, "messages": history(result=THREAT)}))
    azure = call(w, "/deployments/echo/chat/completions?api-version=2024-05-01-preview",
                 {"messages": history(result=THREAT), "max_tokens": 4}, key=None, headers={"api-key": w.key})
    assert_blocked(azure)
    items = [{"role": "user", "content": "Weather?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"x"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": THREAT}]
    assert_blocked(call(w, "/v1/responses", {"model": "echo", "input": items}))


# -- logprobs under the buffered filter --------------------------------------------------------------

TEXT = ("The garden was quiet this morning. Birds sang near the old stone wall while the gardener "
        "watered the roses. Later the rain came and everyone went inside for tea and biscuits.")


def sse(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    lines = [ln.removeprefix("data: ") for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_logprobs_leave_with_their_text_when_the_filter_holds_it(w: World):
    body = {"model": "echo", "messages": [{"role": "user", "content": TEXT}], "logprobs": True, "top_logprobs": 1}
    whole = call(w, "/v1/chat/completions", body).json()
    choice = whole["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == choice["message"]["content"] == TEXT
    assert len(tokens) == whole["usage"]["completion_tokens"]
    assert all(t["logprob"] == 0.0 and [a["token"] for a in t["top_logprobs"]] == [t["token"]] for t in tokens)
    chunks = [c for c in sse(call(w, "/v1/chat/completions", {**body, "stream": True})) if c["choices"]]
    content = [c["choices"][0] for c in chunks if c["choices"][0]["delta"].get("content")]
    # the buffered filter releases text in screened segments (sentences), each with its tokens' logprobs
    assert 1 < len(content) < len(tokens)
    for c in content:
        assert "".join(t["token"] for t in c["logprobs"]["content"]) == c["delta"]["content"]
    legacy = call(w, "/v1/completions", {"model": "echo", "prompt": TEXT, "max_tokens": 5, "logprobs": 0}).json()
    lp = legacy["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == legacy["choices"][0]["text"] and lp["token_logprobs"] == [0.0] * 5
