"""The inference answers byte for byte, and who may call, on a real server whose deployments run
the echo runtime (every answer exact: the words of the last message, one word a token).

The answers are typed models (inference/protocol.py) dumped in the order of their fields; these
tests pin the bytes a client receives, so that a field moved, added, dropped, or sent as null
instead of being left out (or the reverse) fails here: chat and text completions whole and
streamed (usage chunks, logprobs and their offsets, the content filter's results where they
belong), embeddings, /v1/models, the Responses API, and the errors of each API.

The key is read by one parser for the whole server (api/credentials.py): a malformed
Authorization header, an empty Bearer token, a deployment key on the control plane, and Azure's
api-key header beside a bad Authorization header, each on every surface.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.support.inference import CHAT_MODEL, EMBED_MODEL, create_deployment, wait_state
from tests.support.server import Server, loopback_client, start_server
from tests.support.tenants import ok

WORDS = "hello wire world"
MESSAGES = [{"role": "user", "content": WORDS}]


@dataclass
class World:
    server: Server
    plain: str  # deployment key of `plain` (content filter off)
    filtered: str  # deployment key of `filtered` (the default filter, on)
    embed: str  # deployment key of `emb` (echo embeddings, filter off)


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {"MODELPORT_CONTENT_FILTER_DEFAULT": "on", "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
           "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: "echo", EMBED_MODEL: "echo"})}
    s = start_server(tmp_path_factory.mktemp("srv") / "home", env_extra=env)
    try:
        keys = {name: create_deployment(s, name, model, wait=False)["keys"]["primary"]
                for name, model in (("plain", CHAT_MODEL), ("filtered", CHAT_MODEL), ("emb", EMBED_MODEL))}
        with s.client() as admin:
            for name in ("plain", "emb"):
                ok(admin.put(f"/api/v1/deployments/{name}/content-filter", json={"enabled": False}))
        for name in keys:
            assert wait_state(s, name)["state"] == "succeeded"
        yield World(server=s, plain=keys["plain"], filtered=keys["filtered"], embed=keys["emb"])
    finally:
        s.stop()


def post(w: World, path: str, body: dict[str, Any], key: str | None, headers: dict[str, str] | None = None,
         ) -> httpx.Response:
    hdrs = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    with loopback_client(base_url=w.server.url, timeout=180) as c:
        return c.post(path, json=body, headers=hdrs)


def events(r: httpx.Response) -> list[bytes]:
    """The `data:` payloads of a stream, in order, as sent."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return [line[len(b"data: "):] for line in r.content.split(b"\n\n") if line.startswith(b"data: ")]


def same_bytes(raw: bytes, expected: dict[str, Any]) -> None:
    """`raw` is exactly `expected` as the gateway writes JSON (orjson, compact, in this order)."""
    assert raw == orjson.dumps(expected), f"\n sent     {raw!r}\n expected {orjson.dumps(expected)!r}"


# -- chat completions ----------------------------------------------------------------------------------

def test_a_whole_chat_answer_byte_for_byte(w: World) -> None:
    r = post(w, "/v1/chat/completions", {"model": "plain", "messages": MESSAGES}, w.plain)
    assert r.status_code == 200, r.text
    got = orjson.loads(r.content)
    assert got["id"].startswith("chatcmpl-")
    same_bytes(r.content, {
        "id": got["id"], "object": "chat.completion", "created": got["created"], "model": "plain",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})


def test_a_filtered_deployments_whole_answer_carries_the_filter_results_where_they_belong(w: World) -> None:
    r = post(w, "/v1/chat/completions", {"model": "filtered", "messages": MESSAGES, "n": 2, "logprobs": True,
                                         "top_logprobs": 0}, w.filtered)
    assert r.status_code == 200, r.text
    got = orjson.loads(r.content)
    choices = got["choices"]
    assert [c["logprobs"]["content"][0]["token"] for c in choices] == ["hello", "hello"]
    same_bytes(r.content, {
        "id": got["id"], "object": "chat.completion", "created": got["created"], "model": "filtered",
        "choices": [{"index": i, "message": {"role": "assistant", "content": WORDS}, "finish_reason": "stop",
                     "logprobs": {"content": choices[i]["logprobs"]["content"], "refusal": None},
                     "content_filter_results": choices[i]["content_filter_results"]} for i in range(2)],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results":
                                   got["prompt_filter_results"][0]["content_filter_results"]}]})
    assert set(choices[0]["content_filter_results"]) >= {"hate", "sexual", "violence", "self_harm"}


def test_a_streamed_chat_answer_chunk_by_chunk(w: World) -> None:
    r = post(w, "/v1/chat/completions", {"model": "plain", "messages": MESSAGES, "stream": True,
                                         "stream_options": {"include_usage": True}}, w.plain)
    sent = events(r)
    assert sent[-1] == b"[DONE]"
    chunks = [orjson.loads(c) for c in sent[:-1]]
    head = {"id": chunks[0]["id"], "object": "chat.completion.chunk", "created": chunks[0]["created"], "model": "plain"}
    assert head["id"].startswith("chatcmpl-") and all(c["id"] == head["id"] for c in chunks)
    same_bytes(sent[0], {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "logprobs": None, "finish_reason": None}], "usage": None})
    pieces = []
    for raw, chunk in zip(sent[1:-3], chunks[1:-2], strict=True):
        piece = chunk["choices"][0]["delta"]["content"]
        pieces.append(piece)
        same_bytes(raw, {**head, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                              "finish_reason": None}], "usage": None})
    assert "".join(pieces) == WORDS
    same_bytes(sent[-3], {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                          "usage": None})
    same_bytes(sent[-2], {**head, "choices": [],
                          "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})


def test_a_streamed_filtered_answer_sends_the_prompts_results_first_and_each_choices_at_its_end(w: World) -> None:
    r = post(w, "/v1/chat/completions", {"model": "filtered", "messages": MESSAGES, "stream": True}, w.filtered)
    sent = events(r)
    chunks = [orjson.loads(c) for c in sent[:-1]]
    head = {"id": chunks[0]["id"], "object": "chat.completion.chunk", "created": chunks[0]["created"],
            "model": "filtered"}
    same_bytes(sent[0], {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "logprobs": None, "finish_reason": None}],
                         "prompt_filter_results": chunks[0]["prompt_filter_results"]})
    assert all("prompt_filter_results" not in c and "usage" not in c for c in chunks[1:])
    last = chunks[-1]["choices"][0]
    same_bytes(sent[-2], {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop",
                                               "content_filter_results": last["content_filter_results"]}]})
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]) == WORDS


# -- text completions ----------------------------------------------------------------------------------

def test_a_whole_text_completion_with_logprobs(w: World) -> None:
    r = post(w, "/v1/completions", {"model": "plain", "prompt": WORDS, "logprobs": 1, "max_tokens": 3}, w.plain)
    assert r.status_code == 200, r.text
    got = orjson.loads(r.content)
    assert got["id"].startswith("cmpl-")
    tokens = ["hello", " wire", " world"]
    same_bytes(r.content, {
        "id": got["id"], "object": "text_completion", "created": got["created"], "model": "plain",
        "choices": [{"index": 0, "text": WORDS, "finish_reason": "length",
                     "logprobs": {"tokens": tokens, "token_logprobs": [0.0, 0.0, 0.0],
                                  "top_logprobs": [{t: 0.0} for t in tokens], "text_offset": [0, 5, 10]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})


def test_a_streamed_text_completion_keeps_each_tokens_offset_in_the_whole_text(w: World) -> None:
    r = post(w, "/v1/completions", {"model": "plain", "prompt": WORDS, "logprobs": 0, "max_tokens": 3, "stream": True,
                                    "stream_options": {"include_usage": True}}, w.plain)
    sent = events(r)
    chunks = [orjson.loads(c) for c in sent[:-1]]
    head = {"id": chunks[0]["id"], "object": "text_completion", "created": chunks[0]["created"], "model": "plain"}
    text = ""
    for raw, chunk in zip(sent[:-3], chunks[:-2], strict=True):
        choice = chunk["choices"][0]
        lps = choice["logprobs"]
        n = len(lps["tokens"])
        assert lps["text_offset"][0] == len(text)
        same_bytes(raw, {**head, "choices": [{"index": 0, "text": choice["text"], "logprobs": {
            "tokens": lps["tokens"], "token_logprobs": [0.0] * n, "top_logprobs": [{}] * n,
            "text_offset": lps["text_offset"]}, "finish_reason": None}], "usage": None})
        text += choice["text"]
    assert text == WORDS
    same_bytes(sent[-3], {**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
                          "usage": None})
    same_bytes(sent[-2], {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3,
                                                           "total_tokens": 6}})


# -- embeddings, models, info ------------------------------------------------------------------------

def test_embeddings_byte_for_byte(w: World) -> None:
    r = post(w, "/v1/embeddings", {"model": "emb", "input": ["one text", "two more texts"]}, w.embed)
    assert r.status_code == 200, r.text
    got = orjson.loads(r.content)
    assert [len(d["embedding"]) for d in got["data"]] == [8, 8]
    same_bytes(r.content, {"object": "list", "model": "emb",
                           "data": [{"object": "embedding", "index": i, "embedding": got["data"][i]["embedding"]}
                                    for i in range(2)],
                           "usage": {"prompt_tokens": 5, "total_tokens": 5}})
    b64 = post(w, "/v1/embeddings", {"model": "emb", "input": "one text", "encoding_format": "base64"}, w.embed)
    assert isinstance(b64.json()["data"][0]["embedding"], str)


def test_models_and_info_byte_for_byte(w: World) -> None:
    with loopback_client(base_url=w.server.url, timeout=60) as c:
        r = c.get("/v1/models", headers={"Authorization": f"Bearer {w.plain}"})
        info = c.get("/deployments/plain/info", params={"api-version": "2024-05-01-preview"},
                     headers={"api-key": w.plain})
    assert r.status_code == 200, r.text
    created = r.json()["data"][0]["created"]
    expected = {"object": "list", "data": [{"id": "plain", "object": "model", "created": created,
                                            "owned_by": "modelport", "task": "chat-completion",
                                            "state": "succeeded"}]}
    assert r.content == json.dumps(expected, separators=(",", ":")).encode()
    assert info.content == json.dumps({"model_name": CHAT_MODEL, "model_type": "chat-completion",
                                       "model_provider_name": "modelport"}, separators=(",", ":")).encode()


# -- the Responses API -----------------------------------------------------------------------------

RESPONSE_KEYS = ["id", "object", "created_at", "status", "error", "incomplete_details", "instructions",
                 "max_output_tokens", "model", "output", "parallel_tool_calls", "previous_response_id", "store",
                 "temperature", "top_p", "text", "tool_choice", "tools", "truncation", "metadata", "usage"]


def test_a_whole_response_in_openais_order(w: World) -> None:
    r = post(w, "/v1/responses", {"model": "plain", "input": WORDS}, w.plain)
    assert r.status_code == 200, r.text
    got = orjson.loads(r.content)
    assert list(got) == [*RESPONSE_KEYS, "completed_at"]
    (item,) = got["output"]
    assert list(item) == ["type", "id", "status", "role", "content"]
    assert item["content"] == [{"type": "output_text", "text": WORDS, "annotations": [], "logprobs": []}]
    assert got["usage"] == {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
                            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}
    assert (got["status"], got["incomplete_details"], got["tool_choice"]) == ("completed", None, "none")
    cut = post(w, "/v1/responses", {"model": "filtered", "input": WORDS, "max_output_tokens": 2}, w.filtered).json()
    assert list(cut) == [*RESPONSE_KEYS, "prompt_filter_results", "content_filter_results"]
    assert (cut["status"], cut["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})


def test_a_streamed_response_event_by_event(w: World) -> None:
    r = post(w, "/v1/responses", {"model": "plain", "input": WORDS, "stream": True}, w.plain)
    assert r.status_code == 200, r.text
    blocks = [b for b in r.content.split(b"\n\n") if b]
    kinds = [b.split(b"\n")[0].removeprefix(b"event: ").decode() for b in blocks]
    data = [orjson.loads(b.split(b"\n")[1].removeprefix(b"data: ")) for b in blocks]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 3, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [d["type"] for d in data] == kinds and [d["sequence_number"] for d in data] == list(range(len(kinds)))
    assert list(data[0]["response"]) == RESPONSE_KEYS and data[0]["response"]["status"] == "in_progress"
    added = data[2]
    assert list(added) == ["type", "sequence_number", "output_index", "item"]
    assert added["item"]["content"] == [] and added["item"]["status"] == "in_progress"
    assert "".join(d["delta"] for d in data[4:7]) == WORDS
    assert data[7]["text"] == WORDS and data[9]["item"]["status"] == "completed"
    final = data[-1]["response"]
    assert list(final) == [*RESPONSE_KEYS, "completed_at"]
    assert final["output"] == [data[9]["item"]]


# -- errors, in each API's shape ---------------------------------------------------------------------

def test_errors_in_the_openai_shape(w: World) -> None:
    r = post(w, "/v1/chat/completions", {"model": "plain", "messages": MESSAGES, "suffix": "x"}, w.plain)
    assert r.status_code == 400
    assert r.content == json.dumps({"error": {
        "message": "Unrecognized or unsupported request parameter: suffix. Remove it.",
        "type": "invalid_request_error", "param": "suffix", "code": "invalid_input"}}, separators=(",", ":")).encode()
    gone = post(w, "/v1/chat/completions", {"model": "nope", "messages": MESSAGES}, w.plain)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_errors_in_the_azure_shape(w: World) -> None:
    r = post(w, "/deployments/plain/chat/completions?api-version=2024-05-01-preview",
             {"messages": MESSAGES, "suffix": "x"}, None, {"api-key": w.plain})
    assert r.status_code == 400
    assert r.content == json.dumps({"error": {
        "code": "invalid_input",
        "message": "Unrecognized or unsupported request parameter: suffix. Remove it or send "
                   "'extra-parameters: drop'.", "status": 400, "param": "suffix"}}, separators=(",", ":")).encode()


# -- one key parser for the whole server -------------------------------------------------------------

MISSING_OPENAI = {"error": {"message": "Missing key: send 'Authorization: Bearer <key>'.",
                            "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
MISSING_AZURE = {"error": {"code": "unauthenticated",
                           "message": "Missing key: send 'Authorization: Bearer <key>' or 'api-key: <key>'.",
                           "status": 401, "param": None}}


@pytest.mark.parametrize("authorization", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Token abc", "Bearer\tabc",
                                           "bearer"])
def test_no_usable_key_is_a_401_in_each_surfaces_shape(w: World, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with loopback_client(base_url=w.server.url, timeout=60) as c:
        openai = c.post("/v1/chat/completions", json={"model": "plain", "messages": MESSAGES}, headers=headers)
        azure = c.post("/deployments/plain/chat/completions", json={"messages": MESSAGES}, headers=headers)
        control = c.get("/api/v1/deployments", headers=headers)
    assert (openai.status_code, azure.status_code, control.status_code) == (401, 401, 401)
    assert openai.content == json.dumps(MISSING_OPENAI, separators=(",", ":")).encode()
    assert azure.content == json.dumps(MISSING_AZURE, separators=(",", ":")).encode()
    expected = ("Missing API key: send 'Authorization: Bearer <key>'." if not authorization
                else "Send the key as 'Authorization: Bearer <key>'.")
    error = control.json()["error"]
    assert (error["code"], error["message"], error["field"], error["details"]) == ("unauthenticated", expected,
                                                                                   None, {})


def test_the_bearer_scheme_is_case_insensitive_and_the_key_is_trimmed(w: World) -> None:
    r = post(w, "/v1/chat/completions", {"model": "plain", "messages": MESSAGES}, None,
             {"Authorization": f"bEaReR   {w.plain}"})
    assert r.status_code == 200, r.text
    with w.server.client(None) as c:
        admin = c.get("/api/v1/deployments", headers={"Authorization": f"BEARER  {w.server.admin_key}"})
    assert admin.status_code == 200, admin.text


def test_azures_api_key_wins_over_a_bad_authorization_header_on_azure_only(w: World) -> None:
    bad = {"api-key": w.plain, "Authorization": "Basic dXNlcjpwYXNz"}
    azure = post(w, "/deployments/plain/chat/completions", {"messages": MESSAGES}, None, bad)
    assert azure.status_code == 200, azure.text
    openai = post(w, "/v1/chat/completions", {"model": "plain", "messages": MESSAGES}, None, bad)
    assert openai.status_code == 401  # api-key is Azure's header; /v1 reads Authorization only
    wrong = post(w, "/deployments/plain/chat/completions", {"messages": MESSAGES}, None,
                 {"api-key": w.filtered, "Authorization": f"Bearer {w.plain}"})
    assert wrong.status_code == 404  # the api-key was read: another deployment's key


def test_a_deployment_key_never_opens_the_control_plane(w: World) -> None:
    with loopback_client(base_url=w.server.url, timeout=60) as c:
        for method, path, body in (("GET", "/api/v1/deployments", None),
                                   ("POST", "/api/v1/deployments", {"name": "x", "model": CHAT_MODEL})):
            r = c.request(method, path, json=body, headers={"Authorization": f"Bearer {w.plain}"})
            assert r.status_code == 401, r.text
            assert r.json()["error"]["message"] == ("Deployment keys call inference routes only; use an API key on "
                                                    "/api/v1.")
