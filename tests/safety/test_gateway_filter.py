"""The content filter on the request path, on a real server, through both inference APIs.

Deployments run on the echo runtime (it answers with the words of the last message, repeated up
to max_tokens), so outputs are exact and the cut of a filtered output is deterministic: a
custom blocklist pattern spans the point where the echo wraps around, which the prompt itself
never contains. The real bundled MiniLM classifier screens everything (content filter default
on, as in production).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from tests.support.inference import CHAT_MODEL, EMBED_MODEL, create_deployment, wait_state
from tests.support.server import Server, loopback_client, start_server
from tests.support.tenants import Tenant, make_tenant, ok
from tests.support.waiting import wait_until

CANARY = "cnry" + secrets.token_hex(8)
THREAT = f"I am going to find you and kill you and your whole family tonight. {CANARY}"
BENIGN = "What is a good name for a pet goldfish?"
KEYS = {"hate", "sexual", "violence", "self_harm", "jailbreak", "profanity", "custom_blocklists"}
API_VERSION = "2024-05-01-preview"

#: 40 benign words from "alpha" to "zork": the echo of 80 tokens reads "... zork alpha ..." once,
#: at the wrap-around (about 250 characters in), which the blocklist `wrap` catches.
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
         f"papa quebec romeo sierra tango uniform victor {CANARY} xray yankee zulu red orange yellow green "
         "blue indigo violet garden river meadow window pencil candle zork").split()
WRAP_PROMPT = " ".join(WORDS)
WRAP_TOKENS = 80
WRAP_ECHO = " ".join(WORDS[i % len(WORDS)] for i in range(WRAP_TOKENS))


@dataclass
class World:
    server: Server
    keys: dict[str, str]  # deployment name -> primary key
    tenant: Tenant
    tenant_dep: str
    tenant_dep_key: str


def _put_filter(server: Server, name: str, key: str | None = None, **change: Any) -> dict:
    with server.client(key) as c:
        cfg = ok(c.get(f"/api/v1/deployments/{name}/content-filter")).json()
        cfg.update(change)
        return ok(c.put(f"/api/v1/deployments/{name}/content-filter", json=cfg)).json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {"MODELPORT_CONTENT_FILTER_DEFAULT": "on", "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
           "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: "echo", EMBED_MODEL: "echo"})}
    s = start_server(tmp_path_factory.mktemp("srv") / "home", env_extra=env)
    try:
        names = {"guard": CHAT_MODEL, "toggle": CHAT_MODEL, "wrap": CHAT_MODEL, "wrap-async": CHAT_MODEL,
                 "embed": EMBED_MODEL}
        keys = {n: create_deployment(s, n, m, wait=False, type="serverless")["keys"]["primary"]
                for n, m in names.items()}
        tenant = make_tenant(s)
        mine = create_deployment(s, "mine", CHAT_MODEL, key=tenant.keys["owner"], wait=False, type="serverless")
        with s.client() as admin:
            ok(admin.put("/api/v1/safety/blocklists/wrap", json={"terms": [], "patterns": ["zork alpha"]}))
        for n in names:
            assert wait_state(s, n)["state"] == "succeeded"
        assert wait_state(s, "mine", key=tenant.keys["owner"])["state"] == "succeeded"
        for n in ("wrap", "embed"):
            assert _put_filter(s, n, blocklists=["wrap"])["blocklists"] == ["wrap"]
        _put_filter(s, "wrap-async", blocklists=["wrap"], streaming="asynchronous")
        yield World(server=s, keys=keys, tenant=tenant, tenant_dep="mine",
                    tenant_dep_key=mine["keys"]["primary"])
    finally:
        s.stop()


# -- helpers ----------------------------------------------------------------------------------

def oai(w: World, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{w.server.url}/v1", api_key=w.keys[name], max_retries=0, timeout=120)


def post(w: World, name: str, api: str, body: dict, *, key: str | None = None) -> httpx.Response:
    """One chat request over raw HTTP on either API (`openai` or `azure`)."""
    key = key or w.keys[name]
    with loopback_client(base_url=w.server.url, timeout=120) as c:
        if api == "openai":
            return c.post("/v1/chat/completions", json={"model": name, **body},
                          headers={"Authorization": f"Bearer {key}"})
        return c.post(f"/deployments/{name}/chat/completions", params={"api-version": API_VERSION}, json=body,
                      headers={"api-key": key})


def events(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    lines = [ln.removeprefix("data: ") for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(ln) for ln in lines[:-1]]


def streamed(chunks: list[dict]) -> tuple[str, list[str]]:
    """The text of choice 0 and its finish reasons."""
    choices = [ch["choices"][0] for ch in chunks if ch["choices"]]
    return ("".join(c["delta"].get("content") or "" for c in choices),
            [c["finish_reason"] for c in choices if c["finish_reason"]])


def user(text: str, **kw: Any) -> dict:
    return {"messages": [{"role": "user", "content": text}], **kw}


def assert_schema(results: dict) -> None:
    assert set(results) == KEYS, results
    for cat in ("hate", "sexual", "violence", "self_harm"):
        assert set(results[cat]) == {"filtered", "severity"}
    for det in ("jailbreak", "profanity"):
        assert set(results[det]) == {"filtered", "detected"}
    assert set(results["custom_blocklists"]) == {"filtered", "details"}


def assert_blocked_body(body: dict, reason: str) -> None:
    err = body["error"]
    assert err["code"] == "content_filter", body
    assert err["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    result = err["innererror"]["content_filter_result"]
    assert_schema(result)
    assert result[reason]["filtered"] is True
    assert CANARY not in json.dumps(body)


def requests_of(w: World, name: str) -> int:
    with w.server.client() as admin:
        return ok(admin.get(f"/api/v1/deployments/{name}/usage")).json()["requests"]


# -- prompts ----------------------------------------------------------------------------------

def test_the_classifier_is_loaded_at_start_not_by_the_first_request(world: World) -> None:
    """With filtering on by default, the server loads and runs the classifier once at start (in the
    background, readiness does not wait), so no user request pays for the load."""
    def ready_lines() -> list[dict]:
        return [json.loads(line) for line in world.server.logs().splitlines()
                if line.startswith("{") and '"safety.ready"' in line]

    ready = wait_until(ready_lines, 120, 0.2, "the classifier's ready line in the server log")
    assert len(ready) == 1 and ready[0]["msg"] == "content-filter classifier ready"
    assert ready[0]["duration_ms"] > 0


def test_a_threat_is_refused_on_both_apis_before_the_worker(world: World) -> None:
    before = requests_of(world, "guard")
    with oai(world, "guard") as c, pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="guard", messages=[{"role": "user", "content": THREAT}], max_tokens=5)
    assert caught.value.status_code == 400
    assert_blocked_body(caught.value.response.json(), "violence")

    with ChatCompletionsClient(endpoint=f"{world.server.url}/deployments/guard",
                               credential=AzureKeyCredential(world.keys["guard"])) as az, \
            pytest.raises(HttpResponseError) as az_caught:
        az.complete(messages=[UserMessage(THREAT)], max_tokens=5)
    assert az_caught.value.status_code == 400
    assert_blocked_body(az_caught.value.response.json(), "violence")

    streamed_try = post(world, "guard", "openai", user(THREAT, stream=True, max_tokens=5))
    assert streamed_try.status_code == 400
    assert_blocked_body(streamed_try.json(), "violence")
    with loopback_client(base_url=world.server.url, headers={"Authorization": f"Bearer {world.keys['guard']}"}) as c:
        legacy = c.post("/v1/completions", json={"model": "guard", "prompt": THREAT, "max_tokens": 5})
    assert legacy.status_code == 400
    assert_blocked_body(legacy.json(), "violence")
    assert requests_of(world, "guard") == before  # nothing reached a worker


@pytest.mark.parametrize("api", ["openai", "azure"])
def test_a_benign_prompt_carries_every_result_key(world: World, api: str) -> None:
    r = post(world, "guard", api, user(BENIGN, max_tokens=12))
    assert r.status_code == 200, r.text
    body = r.json()
    (prompt,) = body["prompt_filter_results"]
    assert prompt["prompt_index"] == 0
    assert_schema(prompt["content_filter_results"])
    assert not any(v["filtered"] for v in prompt["content_filter_results"].values())
    (choice,) = body["choices"]
    assert choice["message"]["content"].startswith("What is a good name")
    assert choice["finish_reason"] == "length"
    assert_schema(choice["content_filter_results"])

    chunks = events(post(world, "guard", api, user(BENIGN, max_tokens=12, stream=True)))
    assert_schema(chunks[0]["prompt_filter_results"][0]["content_filter_results"])
    text, finishes = streamed(chunks)
    assert text == choice["message"]["content"] and finishes == ["length"]
    (finish,) = [ch["choices"][0] for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]]
    assert_schema(finish["content_filter_results"])


def test_the_openai_client_reads_the_results(world: World) -> None:
    with oai(world, "guard") as c:
        r = c.chat.completions.create(model="guard", messages=[{"role": "user", "content": BENIGN}], max_tokens=4)
    extra = r.model_dump()
    assert set(extra["prompt_filter_results"][0]["content_filter_results"]) == KEYS
    assert set(extra["choices"][0]["content_filter_results"]) == KEYS


# -- outputs ----------------------------------------------------------------------------------

def test_the_wrap_prompt_passes_but_its_echo_would_not() -> None:
    """The premise of the output tests: the cut is the output's doing, not the prompt's."""
    assert "zork alpha" not in WRAP_PROMPT and "zork alpha" in WRAP_ECHO
    assert 150 < WRAP_ECHO.index("zork alpha") < 350


@pytest.mark.parametrize("api", ["openai", "azure"])
def test_buffered_stream_is_cut_before_the_blocked_segment(world: World, api: str) -> None:
    chunks = events(post(world, "wrap", api, user(WRAP_PROMPT, max_tokens=WRAP_TOKENS, stream=True)))
    text, finishes = streamed(chunks)
    assert finishes == ["content_filter"]
    assert WRAP_ECHO.startswith(text) and len(text) < WRAP_ECHO.index("zork alpha") + len("zork alpha")
    assert "zork alpha" not in text.lower() and text.startswith("alpha bravo")
    (finish,) = [ch["choices"][0] for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]]
    assert finish["content_filter_results"]["custom_blocklists"] == {
        "filtered": True, "details": [{"id": "wrap", "filtered": True}]}


@pytest.mark.parametrize("name", ["wrap", "wrap-async"])
@pytest.mark.parametrize("api", ["openai", "azure"])
def test_non_streamed_answer_is_cut_the_same_way(world: World, api: str, name: str) -> None:
    """A non-streamed answer is always screened as `buffered`, whatever the deployment's streaming
    mode: in `asynchronous` mode it must not return the filtered text either (nothing was sent yet)."""
    r = post(world, name, api, user(WRAP_PROMPT, max_tokens=WRAP_TOKENS))
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    content = choice["message"]["content"]
    assert choice["finish_reason"] == "content_filter"
    assert WRAP_ECHO.startswith(content) and "zork alpha" not in content.lower() and content
    assert choice["content_filter_results"]["custom_blocklists"]["filtered"] is True
    # without the blocklist hit (fewer tokens than one wrap-around), the same deployment answers whole
    short = post(world, name, api, user(WRAP_PROMPT, max_tokens=len(WORDS))).json()["choices"][0]
    assert short["message"]["content"] == WRAP_PROMPT and short["finish_reason"] == "length"


def test_non_streamed_legacy_completion_in_asynchronous_mode_is_cut_too(world: World) -> None:
    with loopback_client(base_url=world.server.url,
                      headers={"Authorization": f"Bearer {world.keys['wrap-async']}"}, timeout=120) as c:
        r = c.post("/v1/completions", json={"model": "wrap-async", "prompt": WRAP_PROMPT, "max_tokens": WRAP_TOKENS})
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "content_filter"
    assert WRAP_ECHO.startswith(choice["text"]) and "zork alpha" not in choice["text"].lower()


def test_asynchronous_stream_still_ends_with_content_filter(world: World) -> None:
    """Asynchronous mode sends text before it is screened (documented): only the end is checked."""
    chunks = events(post(world, "wrap-async", "openai", user(WRAP_PROMPT, max_tokens=WRAP_TOKENS, stream=True)))
    text, finishes = streamed(chunks)
    assert finishes == ["content_filter"]
    assert WRAP_ECHO.startswith(text)


def test_embeddings_inputs_are_screened(world: World) -> None:
    with loopback_client(base_url=world.server.url, headers={"Authorization": f"Bearer {world.keys['embed']}"}) as c:
        blocked = c.post("/v1/embeddings", json={"model": "embed", "input": ["fine words", f"the zork alpha {CANARY}"]})
        assert blocked.status_code == 400, blocked.text
        assert_blocked_body(blocked.json(), "custom_blocklists")
        fine = c.post("/v1/embeddings", json={"model": "embed", "input": ["fine words", "more fine words"]})
    assert fine.status_code == 200, fine.text
    body = fine.json()
    assert len(body["data"]) == 2
    assert [p["prompt_index"] for p in body["prompt_filter_results"]] == [0, 1]
    for p in body["prompt_filter_results"]:
        assert_schema(p["content_filter_results"])
    with loopback_client(base_url=world.server.url, headers={"api-key": world.keys["embed"]}) as c:
        az = c.post("/deployments/embed/embeddings", params={"api-version": API_VERSION},
                    json={"input": ["zork alpha"]})
    assert az.status_code == 400 and az.json()["error"]["code"] == "content_filter"


# -- configuration ----------------------------------------------------------------------------

def test_owner_change_applies_to_the_next_request(world: World) -> None:
    assert post(world, "toggle", "openai", user(THREAT, max_tokens=3)).status_code == 400
    assert _put_filter(world.server, "toggle", enabled=False)["enabled"] is False
    r = post(world, "toggle", "openai", user(THREAT, max_tokens=3))
    assert r.status_code == 200, r.text
    assert "prompt_filter_results" not in r.json()  # a filter that is off adds nothing
    assert _put_filter(world.server, "toggle", enabled=True)["enabled"] is True
    assert post(world, "toggle", "azure", user(THREAT, max_tokens=3)).status_code == 400


def test_only_owners_change_a_filter(world: World) -> None:
    t, name = world.tenant, world.tenant_dep
    with world.server.client(t.keys["reader"]) as reader, world.server.client(t.keys["contributor"]) as contrib:
        cfg = ok(reader.get(f"/api/v1/deployments/{name}/content-filter")).json()
        assert cfg["enabled"] is True
        for c in (reader, contrib):
            r = c.put(f"/api/v1/deployments/{name}/content-filter", json={**cfg, "enabled": False})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
        assert ok(reader.get(f"/api/v1/deployments/{name}/content-filter")).json() == cfg
        assert reader.put("/api/v1/safety/blocklists/mine", json={"terms": ["x"]}).status_code == 403
        assert ok(reader.post("/api/v1/safety/analyze", json={"text": BENIGN})).json()["filtered"] is False


def test_an_unloadable_backend_fails_closed(world: World) -> None:
    t, name, dep_key = world.tenant, world.tenant_dep, world.tenant_dep_key
    _put_filter(world.server, name, key=t.keys["owner"], backend="no-such-backend")
    for api in ("openai", "azure"):
        for stream in (False, True):
            r = post(world, name, api, user(BENIGN, max_tokens=3, stream=stream), key=dep_key)
            assert r.status_code == 503, r.text
            assert "What is a good" not in r.text
    _put_filter(world.server, name, key=t.keys["owner"], backend="minilm")
    ok(post(world, name, "openai", user(BENIGN, max_tokens=3), key=dep_key))  # the same deployment, screened


# -- counts, privacy, CLI ---------------------------------------------------------------------

def test_counts_show_what_was_caught(world: World) -> None:
    def counts(name: str) -> dict[tuple[str, str, str], int]:
        with world.server.client() as admin:
            rows = ok(admin.get(f"/api/v1/deployments/{name}/content-filter/counts")).json()
        assert all(set(r) == {"direction", "category", "action", "count"} for r in rows)
        return {(r["direction"], r["category"], r["action"]): r["count"] for r in rows}

    # What it counts, this test causes itself, so that it does not depend on the tests before it.
    assert post(world, "guard", "openai", user(THREAT, max_tokens=3)).status_code == 400
    assert streamed(events(post(world, "wrap", "openai", user(WRAP_PROMPT, max_tokens=WRAP_TOKENS,
                                                              stream=True))))[1] == ["content_filter"]
    with loopback_client(base_url=world.server.url, headers={"Authorization": f"Bearer {world.keys['embed']}"}) as c:
        assert c.post("/v1/embeddings", json={"model": "embed", "input": ["the zork alpha"]}).status_code == 400

    def all_counted() -> bool:  # counts reach the database with the usage, about every second
        return (counts("guard").get(("prompt", "violence", "filtered"), 0) >= 1
                and counts("wrap").get(("completion", "custom_blocklists", "filtered"), 0) >= 1
                and counts("embed").get(("prompt", "custom_blocklists", "filtered"), 0) >= 1)

    wait_until(all_counted, 30, 0.2, "the three filtered requests to be counted")


def test_a_stream_cut_by_the_filter_is_still_billed(world: World) -> None:
    """A buffered stream cut by the filter ends before the worker's usage event is read: the
    tokens generated until the cut are recorded (a lower bound), not zero."""
    s = world.server
    create_deployment(s, "wrap-bill", CHAT_MODEL, wait=False, type="serverless")
    assert wait_state(s, "wrap-bill")["state"] == "succeeded"
    _put_filter(s, "wrap-bill", blocklists=["wrap"])
    with s.client() as admin:
        r = admin.post("/v1/chat/completions", json={"model": "wrap-bill", **user(WRAP_PROMPT, max_tokens=WRAP_TOKENS,
                                                                                   stream=True)})
        finishes = [c["finish_reason"] for e in events(r) for c in e.get("choices", []) if c.get("finish_reason")]
        assert finishes == ["content_filter"]

        def recorded() -> dict | None:  # usage is flushed to the database about every second
            u = ok(admin.get("/api/v1/deployments/wrap-bill/usage")).json()
            return u if u["requests"] else None

        usage = wait_until(recorded, 30, 0.2, "the stream's usage to be recorded")
    assert usage["requests"] == 1
    assert 0 < usage["completion_tokens"] <= WRAP_TOKENS


def test_cli_check_reads_stdin_or_a_file(world: World, tmp_path: Path) -> None:
    s = world.server
    r = s.cli("safety", "check", key=s.admin_key, input=THREAT, check=True)
    assert "violence" in r.stdout and "filtered" in r.stdout and "not filtered" not in r.stdout
    as_json = json.loads(s.cli("safety", "check", "--json", key=s.admin_key, input=THREAT, check=True).stdout)
    assert as_json["filtered"] is True and as_json["content_filter_results"]["violence"]["filtered"] is True
    text = tmp_path / "benign.txt"
    text.write_text(BENIGN)
    r = s.cli("safety", "check", str(text), key=s.admin_key, check=True)
    assert "not filtered" in r.stdout
    refused = s.cli("safety", "check", "kill you tonight", key=s.admin_key)  # no text argument: only a file
    assert refused.returncode != 0 and "Traceback" not in refused.stderr and "filtered" not in refused.stdout


def test_nothing_screened_is_kept(world: World) -> None:
    """P1, last: the canary went through blocked prompts, a filtered output and embeddings inputs."""
    s = world.server
    found = [p for p in s.home.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert found == []
    assert CANARY not in s.logs()
