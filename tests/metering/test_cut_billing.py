"""A stream cut before its end is billed the tokens its worker generated, not the deltas the
gateway happened to read (issue 13): cut by the client, cut by the content filter, or cut by
the worker's death.

A real server, real worker processes with the `echo` runtime at 40 ms a token (one word is one
token, so counts are exact), raw HTTP. Every request asks for the stop sequence " p p p p p Z",
which the echo of "p p p p q" never contains but keeps nearly matching: the worker holds each
"p" back until the "q" shows that no stop sequence starts there, then sends four or five
tokens in one delta. So at any moment up to four tokens the worker generated have not left it,
and one delta stands for several tokens: a bill made from the deltas the gateway read is short
of what was generated in all three cases.

The counts the bills are checked against are independent of the billing path: the workers'
own `tokens_generated_total` (health), or the words the client received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.inference import CHAT_MODEL, create_deployment, kill, worker_health, workers
from tests.support.runtimes import SLOW
from tests.support.server import Server, lean_env, loopback_client, start_server
from tests.support.tenants import ok
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

TEXT = "p p p p q"  # echoed as "p p p p q p p p p q ...": one word, one token
PROMPT_TOKENS = 1 + 5  # the echo counts the role and the words of each message
HOLD = [" p p p p p Z"]  # never matched, nearly always partly matched: the worker holds "p"s back
WRAP = "q p"  # in the echo's second cycle, never in the prompt: the content filter cuts there


@dataclass
class World:
    server: Server
    keys: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    s = start_server(tmp_path_factory.mktemp("cut") / "home",
                     env_extra=lean_env({CHAT_MODEL: SLOW}, MODELPORT_CONTENT_FILTER_DEFAULT="off"))
    try:
        names = ("client-cut", "filter-stream", "filter-whole", "crash")
        keys = {n: create_deployment(s, n, CHAT_MODEL, type="dedicated")["keys"]["primary"] for n in names}
        with s.client() as admin:
            ok(admin.put("/api/v1/safety/blocklists/wrap", json={"terms": [], "patterns": [WRAP]}))
            for name in ("filter-stream", "filter-whole"):
                cfg = ok(admin.get(f"/api/v1/deployments/{name}/content-filter")).json()
                ok(admin.put(f"/api/v1/deployments/{name}/content-filter",
                             json={**cfg, "enabled": True, "blocklists": ["wrap"]}))
        yield World(s, keys)
    finally:
        s.stop()


def _body(name: str, **kw: object) -> dict:
    return {"model": name, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 400, "stop": HOLD, **kw}


def _http(world: World, name: str) -> httpx.Client:
    return loopback_client(base_url=world.server.url, headers={"Authorization": f"Bearer {world.keys[name]}"},
                        timeout=120)


def _generated_total(s: Server) -> int:
    return sum(w.health.tokens_generated_total for w in workers(s).values())


def _idle(s: Server) -> None:
    wait_until(lambda: all(worker_health(w.socket).active_generations == 0 for w in workers(s).values()),
               30, 0.05, "the workers to stop generating")


def _billed(world: World, name: str) -> dict:
    """The deployment's usage once its one request is recorded (a cut one is recorded off the
    request's task)."""
    def recorded() -> dict | None:
        with world.server.client() as admin:
            usage = ok(admin.get(f"/api/v1/deployments/{name}/usage")).json()
        return usage if usage["requests"] == 1 else None

    return wait_until(recorded, 30, 0.1, f"the usage of {name}")


def _content(line: str) -> str | None:
    if not line.startswith("data: {"):
        return None
    event = json.loads(line[6:])
    choices = event.get("choices") or [{}]
    return choices[0].get("delta", {}).get("content")


def test_a_stream_the_client_cuts_is_billed_what_the_worker_generated(world: World) -> None:
    s = world.server
    before = _generated_total(s)
    received = ""
    with _http(world, "client-cut") as http, \
            http.stream("POST", "/v1/chat/completions", json=_body("client-cut", stream=True)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            received += _content(line) or ""
            if len(received.split()) >= 5:  # "p", " p p p q": the next delta comes with the 10th token
                # cut while the worker holds tokens it generated back: the 6th and 7th
                wait_until(lambda: _generated_total(s) - before >= 7, 30, 0.01, "two more tokens")
                break
    _idle(s)
    generated = _generated_total(s) - before
    billed = _billed(world, "client-cut")
    assert len(received.split()) == 5 and generated >= 7  # tokens the gateway never read
    assert (billed["prompt_tokens"], billed["completion_tokens"]) == (PROMPT_TOKENS, generated), billed


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_an_answer_the_filter_cuts_is_billed_and_reported_what_the_worker_generated(world: World,
                                                                                  stream: bool) -> None:
    s = world.server
    name = "filter-stream" if stream else "filter-whole"
    before = _generated_total(s)
    with _http(world, name) as http:
        if stream:
            r = ok(http.post("/v1/chat/completions",
                             json=_body(name, stream=True, stream_options={"include_usage": True})))
            events = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
            finish = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
            usage = events[-1]["usage"]
        else:
            answer = ok(http.post("/v1/chat/completions", json=_body(name))).json()
            finish = [c["finish_reason"] for c in answer["choices"]]
            usage = answer["usage"]
    assert finish == ["content_filter"]
    _idle(s)
    generated = _generated_total(s) - before
    billed = _billed(world, name)
    assert generated >= 10  # the wrap comes with the second cycle
    assert (billed["prompt_tokens"], billed["completion_tokens"]) == (PROMPT_TOKENS, generated), billed
    # what the answer says is what is billed
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (PROMPT_TOKENS, generated), usage


def test_a_stream_whose_worker_dies_is_billed_what_the_worker_last_reported(world: World) -> None:
    """Tokens the dead worker generated but never sent are unknowable; those it reported are
    exactly the words the client received (the gateway forwards every delta it read before the
    error), and one delta here stands for four or five of them."""
    s = world.server
    received = ""
    error = None
    with _http(world, "crash") as http, \
            http.stream("POST", "/v1/chat/completions", json=_body("crash", stream=True)) as r:
        assert r.status_code == 200
        killed = False
        for line in r.iter_lines():
            received += _content(line) or ""
            if line.startswith("data: {") and "error" in json.loads(line[6:]):
                error = json.loads(line[6:])["error"]
            if not killed and len(received.split()) >= 10:
                busy = [w for w in workers(s).values() if w.health.active_generations]
                assert len(busy) == 1
                kill(busy[0].health.pid)
                killed = True
    assert error is not None  # the stream ended with an explicit error, not a silent cut
    billed = _billed(world, "crash")
    # (its prompt is billed only if a worker of the deployment can count it by then: the
    # replacement may still be starting)
    assert billed["completion_tokens"] == len(received.split()), billed
