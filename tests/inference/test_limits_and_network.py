"""Admission on a real server: body size (413), the bounded per-deployment queue (429 with
Retry-After), and who may call a deployment (P7, network half: 403 for callers outside the
allowed ranges, decided before the body is read whenever the deployment is known).

Callers at another address bind their source address to 127.0.0.2 (all of 127.0.0.0/8 is
loopback on Linux), so the server sees two different clients on one machine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
import requests
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.transport import RequestsTransport

from tests.support.inference import CHAT_MODEL, chat, chat_body, create_deployment
from tests.support.runtimes import SLOW
from tests.support.server import Server, loopback_client, start_lean
from tests.support.waiting import wait_until

LIMIT = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("limits") / "home", {CHAT_MODEL: SLOW},
                   MODELPORT_MAX_REQUEST_BYTES=str(LIMIT), MODELPORT_QUEUE_PER_DEPLOYMENT="1")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def public(server: Server) -> dict:
    return create_deployment(server, "public", CHAT_MODEL)


@pytest.fixture(scope="module")
def private(server: Server) -> dict:
    return create_deployment(server, "private", CHAT_MODEL,
                             network={"public_access": False, "allowed_ranges": ["127.0.0.1/32"]})


def from_address(server: Server, key: str, address: str, **kw) -> httpx.Client:
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **kw.pop("headers", {})}
    return loopback_client(base_url=server.url, headers=headers, timeout=60,
                        transport=httpx.HTTPTransport(local_address=address), **kw)


# -- body size ---------------------------------------------------------------------------


def test_body_over_the_limit_is_413(server: Server, public: dict):
    key = public["keys"]["primary"]
    big = chat_body("word " * LIMIT, model="public")
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(**big)
        assert err.value.status_code == 413 and str(LIMIT) in err.value.message
        # just under the limit is fine
        assert c.chat.completions.create(model="public", messages=[{"role": "user", "content": "ok"}]).choices


def test_chunked_body_over_the_limit_is_413(server: Server, public: dict):
    """Without a Content-Length the server counts what it reads and stops at the limit."""
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "public", "messages": [{"role": "user", "content": "'
        for _ in range(LIMIT // 512 + 2):
            yield b"x" * 512
        yield b'"}]}'

    with server.client(public["keys"]["primary"]) as c:
        r = c.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


# -- the bounded queue -------------------------------------------------------------------


def test_full_queue_is_429_with_retry_after(server: Server, public: dict):
    """One worker taking one request at a time, one waiting place per deployment: of four
    concurrent long requests, two are refused at once with 429 and Retry-After."""
    key = public["keys"]["primary"]
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def call() -> None:
        r = chat(server, key, None, "a b c d e", max_tokens=50)  # 2 s each
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refused = [r for r in results if r.status_code == 429]
    assert len(results) == 4 and refused, [r.status_code for r in results]
    assert all(r.status_code == 200 for r in results if r not in refused)
    for r in refused:
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
    # the openai client sees a RateLimitError (its own retries off) while two callers keep the
    # worker busy and the waiting place taken
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            call()

    busy = [threading.Thread(target=keep_busy) for _ in range(2)]
    for t in busy:
        t.start()
    try:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
            def limited() -> bool:
                try:
                    c.chat.completions.create(model="public", messages=[{"role": "user", "content": "x"}],
                                              max_tokens=1)
                except openai.RateLimitError as exc:
                    return exc.response.headers["retry-after"].isdigit()
                return False
            wait_until(limited, 60, 0.05, "a RateLimitError while the queue is full")
    finally:
        stop.set()
        for t in busy:
            t.join(120)


# -- network settings (P7) ---------------------------------------------------------------


def test_caller_outside_the_allowed_ranges_gets_403(server: Server, private: dict, public: dict):
    key = private["keys"]["primary"]
    for k in (key, server.admin_key):  # a deployment key, and a workspace API key naming it
        with from_address(server, k, "127.0.0.2") as c:
            r = c.post("/v1/chat/completions", json=chat_body(model="private"))
            assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
            assert "allowed ranges" in r.json()["error"]["message"]
            assert c.get("/deployments/private/info", headers={"api-key": k}).status_code == 403
        with from_address(server, k, "127.0.0.1") as c:
            assert c.post("/v1/chat/completions", json=chat_body(model="private")).status_code == 200
    # the public deployment of the same workspace takes calls from anywhere
    with from_address(server, server.admin_key, "127.0.0.2") as c:
        assert c.post("/v1/chat/completions", json=chat_body(model="public")).status_code == 200


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Binds the official Azure SDK's transport (requests) to a source address."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def azure_from(server: Server, key: str, address: str) -> ChatCompletionsClient:
    session = requests.Session()
    session.mount("http://", SourceAddressAdapter(address))
    return ChatCompletionsClient(endpoint=f"{server.url}/deployments/private", credential=AzureKeyCredential(key),
                                 transport=RequestsTransport(session=session, session_owner=True))


def test_azure_client_outside_the_allowed_ranges_gets_403(server: Server, private: dict):
    key = private["keys"]["secondary"]
    with azure_from(server, key, "127.0.0.1") as c:
        assert c.complete(messages=[UserMessage("hi")], max_tokens=1).usage.completion_tokens == 1
    with azure_from(server, key, "127.0.0.2") as c, pytest.raises(HttpResponseError) as err:
        c.complete(messages=[UserMessage("hi")], max_tokens=1)
    assert err.value.status_code == 403 and err.value.error.code == "Forbidden"


def test_403_comes_before_the_body_is_read(server: Server, private: dict):
    """A body over the size limit from an address outside the ranges: 403, not 413."""
    big = chat_body("word " * (2 * LIMIT), model="private")
    with from_address(server, private["keys"]["primary"], "127.0.0.2") as c:
        assert c.post("/v1/chat/completions", json=big).status_code == 403
    with from_address(server, "", "127.0.0.2", headers={"api-key": server.admin_key}) as c:
        assert c.post("/deployments/private/chat/completions", json=big).status_code == 403  # URL names it
    with from_address(server, private["keys"]["primary"], "127.0.0.1") as c:
        assert c.post("/v1/chat/completions", json=big).status_code == 413


def test_network_settings_change_takes_effect_at_once(server: Server):
    key = create_deployment(server, "flip", CHAT_MODEL,
                            network={"public_access": False, "allowed_ranges": ["10.0.0.0/8"]})["keys"]["primary"]
    with from_address(server, key, "127.0.0.2") as c:
        assert c.post("/v1/chat/completions", json=chat_body()).status_code == 403
        with server.client() as admin:
            r = admin.patch("/api/v1/deployments/flip", json={"network": {"public_access": False,
                                                                          "allowed_ranges": ["127.0.0.0/30"]}})
            assert r.status_code == 200 and r.json()["network"]["allowed_ranges"] == ["127.0.0.0/30"]
        assert c.post("/v1/chat/completions", json=chat_body()).status_code == 200
        with server.client() as admin:
            assert admin.patch("/api/v1/deployments/flip", json={"network": {"public_access": True}}).status_code == 200
        assert c.post("/v1/chat/completions", json=chat_body()).status_code == 200
