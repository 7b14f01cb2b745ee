"""Rate limits on the request path of a real server, seen by the official clients.

Every answer to a request that passed the network settings carries the x-ratelimit-limit/
remaining-requests/-tokens headers (both APIs, streamed too; as charged, or as they stand for a
refused body); a throttled one gets 429 with `retry-after` and `retry-after-ms`, after which the
official `openai` and `azure-ai-inference` clients retry on their own and succeed. Tokens are
charged at admission from the estimate (prompt + max_tokens). The admission order: no key (401),
then the network settings (403), then the body (400), then the rate limits (429).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import httpx
import openai
import pytest
import redis
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline.transport import RequestsTransport

from tests.support.inference import CHAT_MODEL, EMBED_MODEL, chat_body, create_deployment
from tests.support.redis import require_redis
from tests.support.server import Server, loopback_client, start_lean
from tests.support.tenants import ok, unique

HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-limit-tokens",
           "x-ratelimit-remaining-tokens")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("rates") / "home", {CHAT_MODEL: "echo", EMBED_MODEL: "echo"})
    try:
        yield s
    finally:
        s.stop()


def limited(server: Server, rpm: int | None = None, tpm: int | None = None, model: str = CHAT_MODEL,
            **fields) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A new deployment with these limits: (name, primary key)."""
    name = unique("rl")
    d = create_deployment(server, name, model, **fields)
    limits = {k: v for k, v in (("requests_per_minute", rpm), ("tokens_per_minute", tpm)) if v is not None}
    if limits:
        with server.client() as c:
            ok(c.patch(f"/api/v1/deployments/{name}", json={"rate_limits": limits}))
    return name, d["keys"]["primary"]


def wait_for_window_start() -> None:
    """Windows are aligned to the clock (memory storage): keep a test's calls inside one 10-second
    window of requests and one 60-second window of tokens."""
    left = 10 - time.time() % 10
    if left < 4 or 60 - time.time() % 60 < 4:
        time.sleep(left + 0.05)


def test_every_answer_carries_the_headers_on_both_apis_streamed_too(server: Server) -> None:
    name, key = limited(server, rpm=600, tpm=50_000)
    wait_for_window_start()
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(model=name, max_tokens=10, **chat_body("one two three"))
        assert raw.headers["x-ratelimit-limit-requests"] == "600"
        assert raw.headers["x-ratelimit-remaining-requests"] == "99"  # 100 per 10 seconds
        assert raw.headers["x-ratelimit-limit-tokens"] == "50000"
        # estimate: "one two three" is 13 bytes (4 tokens) + 4 for the message + max_tokens 10
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(50_000 - 18)
        with c.chat.completions.with_streaming_response.create(model=name, max_tokens=10, stream=True,
                                                               **chat_body("one two three")) as stream:
            assert stream.headers["x-ratelimit-remaining-requests"] == "98"
            assert stream.headers["x-ratelimit-remaining-tokens"] == str(50_000 - 36)
            assert b"[DONE]" in b"".join(stream.iter_bytes())
        raw = c.completions.with_raw_response.create(model=name, prompt="abcd", max_tokens=5)
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(50_000 - 36 - 6)
    with loopback_client(base_url=server.url, headers={"api-key": key}, timeout=60) as c:
        r = c.post(f"/deployments/{name}/chat/completions", params={"api-version": "2024-05-01-preview"},
                   json=chat_body("hi", max_tokens=3))
        assert r.status_code == 200 and all(h in r.headers for h in HEADERS)
        assert r.headers["x-ratelimit-remaining-requests"] == "96"
        # A request that could never fit the minute: 400 naming the limit, not a 429 to retry forever.
        r = c.post(f"/deployments/{name}/chat/completions", json=chat_body("hi", max_tokens=30_000, n=2))
        assert r.status_code == 400 and "50000 tokens per minute" in r.json()["error"]["message"]
        assert r.headers["x-ratelimit-remaining-requests"] == "96"  # it was not charged
    ename, ekey = limited(server, rpm=60, tpm=1000, model=EMBED_MODEL)
    wait_for_window_start()
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=ekey, max_retries=0) as c:
        raw = c.embeddings.with_raw_response.create(model=ename, input=["abcdefgh", "ab"])
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - 3)
        # An error after admission carries them too (this model has 8 dimensions).
        with pytest.raises(openai.BadRequestError) as err:
            c.embeddings.create(model=ename, input=["abcdefgh"], dimensions=3)
        assert err.value.response.headers["x-ratelimit-remaining-tokens"] == str(1000 - 5)


def test_429_in_each_apis_shape_with_retry_after(server: Server) -> None:
    name, key = limited(server, rpm=6)  # one request per 10 seconds
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
        c.chat.completions.create(model=name, max_tokens=2, **chat_body())
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model=name, max_tokens=2, **chat_body())
    r = err.value.response
    assert r.status_code == 429 and err.value.code == "rate_limit_exceeded"
    ms = int(r.headers["retry-after-ms"])
    assert 0 < ms <= 10_100 and int(r.headers["retry-after"]) == -(-ms // 1000)
    assert r.headers["x-ratelimit-remaining-requests"] == "0" and all(h in r.headers for h in HEADERS)
    with loopback_client(base_url=server.url, headers={"api-key": key}, timeout=60) as c:
        r = c.post(f"/deployments/{name}/chat/completions", json=chat_body("hi", max_tokens=2))
    assert r.status_code == 429 and r.json()["error"]["code"] == "429" and "retry-after-ms" in r.headers
    assert "6 requests per minute" in r.json()["error"]["message"]


def test_tokens_are_charged_at_admission_from_the_estimate(server: Server) -> None:
    name, key = limited(server, tpm=1000)
    wait_for_window_start()
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
        for left in (1000 - 405, 1000 - 810):  # "hello world": 3 tokens + 4 for the message + 398
            raw = c.chat.completions.with_raw_response.create(model=name, max_tokens=398, **chat_body())
            assert raw.headers["x-ratelimit-remaining-tokens"] == str(left)
            assert raw.parse().usage.completion_tokens == 398  # what is billed is what was generated
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model=name, max_tokens=398, **chat_body())
        assert "1000 tokens per minute" in err.value.message
        # A smaller request still fits: the refused one charged nothing.
        raw = c.chat.completions.with_raw_response.create(model=name, max_tokens=180, **chat_body())
        assert raw.headers["x-ratelimit-remaining-tokens"] == "3"
        # n multiplies max_tokens
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model=name, max_tokens=1, n=4, **chat_body())


def test_the_openai_client_retries_on_its_own_and_succeeds(server: Server) -> None:
    name, key = limited(server, rpm=6)
    seen: list[int] = []
    hooks = {"response": [lambda r: seen.append(r.status_code)]}
    with loopback_client(event_hooks=hooks, timeout=60) as http, \
            openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, http_client=http) as c:  # default retries
        c.chat.completions.create(model=name, max_tokens=2, **chat_body())
        started = time.monotonic()
        reply = c.chat.completions.create(model=name, max_tokens=2, **chat_body("retry me"))
        waited = time.monotonic() - started
    assert reply.choices[0].message.content == "retry me"
    assert seen[0] == 200 and seen[-1] == 200 and 429 in seen[1:-1], seen
    assert waited <= 12


def test_the_azure_client_retries_on_its_own_and_succeeds(server: Server) -> None:
    name, key = limited(server, rpm=6)
    client = ChatCompletionsClient(endpoint=f"{server.url}/deployments/{name}", credential=AzureKeyCredential(key),
                                   transport=RequestsTransport())
    with client:
        client.complete(messages=[UserMessage("first")], max_tokens=2)
        started = time.monotonic()
        reply = client.complete(messages=[UserMessage("second")], max_tokens=1)
        assert time.monotonic() - started > 0.5  # it waited for the window, it did not just get in
    assert reply.choices[0].message.content == "second"


def test_admission_order_401_then_network_403_then_body_400_then_429(server: Server) -> None:
    name, key = limited(server, rpm=6, network={"public_access": False, "allowed_ranges": ["127.0.0.1/32"]})
    with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        assert c.post("/v1/chat/completions", json=chat_body(model=name, max_tokens=2)).status_code == 200
        spent = c.post("/v1/chat/completions", json=chat_body(model=name, max_tokens=2))
        assert spent.status_code == 429  # the deployment's requests for this window are spent
        # A body the API refuses is 400 before any quota: it spends nothing and says what to fix.
        bad = c.post("/v1/chat/completions", json={"model": name, "messages": "not a list"})
        assert bad.status_code == 400
        # ... and still tells what is left (charging nothing): every answer past the network check does.
        assert bad.headers["x-ratelimit-remaining-requests"] == "0" and all(h in bad.headers for h in HEADERS)
    with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      transport=httpx.HTTPTransport(local_address="127.0.0.2")) as outside:
        r = outside.post("/v1/chat/completions", json=chat_body(model=name, max_tokens=2))
        assert r.status_code == 403 and "x-ratelimit-limit-requests" not in r.headers
        r = outside.post(f"/deployments/{name}/chat/completions", json=chat_body(max_tokens=2),
                         headers={"api-key": key})
        assert r.status_code == 403
    with loopback_client(base_url=server.url, headers={"Authorization": "Bearer mpd_0000000000000000_" + "x" * 43},
                      timeout=60) as anonymous:
        assert anonymous.post("/v1/chat/completions", json=chat_body(model=name)).status_code == 401


def test_limits_changed_on_the_control_plane_apply_to_the_next_request(server: Server) -> None:
    name, key = limited(server)
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(model=name, max_tokens=2, **chat_body())
        assert raw.headers["x-ratelimit-limit-requests"] == "1000"
        with server.client() as admin:
            ok(admin.patch(f"/api/v1/deployments/{name}", json={"rate_limits": {"tokens_per_minute": 100}}))
        raw = c.chat.completions.with_raw_response.create(model=name, max_tokens=2, **chat_body())
        assert raw.headers["x-ratelimit-limit-tokens"] == "100"


def test_lowering_a_limit_keeps_what_was_already_spent(server: Server) -> None:
    """Counts belong to the deployment, not to a limit's value: lowering the limit does not give a
    fresh window, and the next request is measured against what this window already admitted."""
    name, key = limited(server, rpm=600)  # 100 per 10 seconds
    wait_for_window_start()
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
        for _ in range(5):
            c.chat.completions.create(model=name, max_tokens=1, **chat_body())
        with server.client() as admin:
            ok(admin.patch(f"/api/v1/deployments/{name}", json={"rate_limits": {"requests_per_minute": 30}}))
        with pytest.raises(openai.RateLimitError) as err:  # 5 per 10 seconds, and 5 were admitted
            c.chat.completions.create(model=name, max_tokens=1, **chat_body())
        assert err.value.response.headers["x-ratelimit-limit-requests"] == "30"


def test_a_server_with_redis_keeps_its_counts_there(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = require_redis()
    s = start_lean(tmp_path / "home", {CHAT_MODEL: "echo"}, MODELPORT_REDIS_URL=url)
    try:
        name, key = limited(s, rpm=6)
        with s.client() as admin:
            dep_id = ok(admin.get(f"/api/v1/deployments/{name}")).json()["id"]
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0) as c:
            c.chat.completions.create(model=name, max_tokens=2, **chat_body())
            with pytest.raises(openai.RateLimitError):
                c.chat.completions.create(model=name, max_tokens=2, **chat_body())
        with redis.Redis.from_url(url) as r:
            keys = {k.decode() for k in r.keys(f"*{dep_id}*")}
        assert keys and all(k.startswith("modelport:") for k in keys), keys
    finally:
        s.stop()


def test_32_concurrent_clients_are_admitted_within_2_percent_per_window(server: Server) -> None:
    """32 clients call as fast as a 429 lets them (a tenth of a second's pause after one) for two
    whole 10-second windows; each window admits its 100 requests (600 a minute), within 2%."""
    name, key = limited(server, rpm=600)
    left = 10 - time.time() % 10
    time.sleep(left + 0.02)  # from the start of a window
    first = int(time.time() // 10)
    admitted: list[float] = []
    statuses: dict[int, int] = {}

    async def run() -> None:
        end = (first + 2) * 10
        headers = {"Authorization": f"Bearer {key}"}
        body = chat_body("hi", model=name, max_tokens=1)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
            async def client() -> None:
                while time.time() < end - 0.05:
                    sent = time.time()
                    async with session.post(f"{server.url}/v1/chat/completions", json=body, headers=headers) as r:
                        await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                    if r.status == 200:
                        admitted.append((sent + time.time()) / 2)
                    else:
                        await asyncio.sleep(0.1)

            await asyncio.gather(*(client() for _ in range(32)))

    asyncio.run(run())
    assert set(statuses) == {200, 429} and statuses[429] > 100, statuses  # the clients pressed on the limit
    per_window = [sum(1 for t in admitted if int(t // 10) == w) for w in (first, first + 1)]
    assert all(abs(n - 100) <= 2 for n in per_window), per_window
