"""Tokens per minute made exact once usage is known (quotas/settle.py): a request is charged its
admission estimate, then what it used beyond it, so that each request ends up charged
max(estimate, used) tokens: a request without max_tokens that generates more than the 1,024
tokens it was charged, or a prompt denser than the estimate, cannot slip past the limit.

Over random sequences of admissions and usage events in any order (several requests in flight,
usage recorded twice for one request, a judge deployment's usage recorded in a request's
context), on the real limiter with memory and Redis storage, the tokens window holds exactly the
sum of max(estimate, used), plus the estimates of requests not settled yet. Then the same on a
real server through the HTTP path, with the echo runtime (one word a token: a prompt of short
words is under-estimated by its byte length).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from modelport.quotas import settle
from modelport.quotas.limiter import RateLimiter, storage_uri
from modelport.quotas.rates import RateLimits
from tests.support.inference import CHAT_MODEL, create_deployment
from tests.support.redis import require_redis
from tests.support.server import Server, start_lean
from tests.support.tenants import make_tenant, ok, unique
from tests.support.waiting import wait_until

LIMITS = RateLimits(10**6, 10**9)  # nothing is ever refused: the count is what is checked


@dataclass
class Request:
    ctx: contextvars.Context
    estimate: int
    used: int | None = None  # set once its usage was recorded


class Machine(RuleBasedStateMachine):
    uri = "async+memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.limiter = RateLimiter(self.uri)
        self.dep = "dep_" + secrets.token_hex(8)
        self.requests: list[Request] = []
        self.started = time.time()

    def run(self, coro, ctx: contextvars.Context | None = None):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(self.loop.create_task(coro, context=ctx))

    @rule(estimate=st.integers(1, 5000))
    def admit(self, estimate: int) -> None:
        ctx = contextvars.copy_context()  # each request its own context, as each request its own task

        async def go() -> None:
            await self.limiter.admit(self.dep, LIMITS, estimate)
            settle.admitted(self.limiter, self.dep, LIMITS, estimate)

        self.run(go(), ctx)
        self.requests.append(Request(ctx, estimate))

    def _usage(self, i: int, used_in: int, used_out: int, deployment: str | None = None) -> None:
        req = self.requests[i % len(self.requests)]

        async def go() -> None:
            settle.settle({"deployment_id": deployment or self.dep, "input_tokens": used_in,
                           "output_tokens": used_out})
            await settle.drain()

        self.run(go(), req.ctx)
        if deployment is None and req.used is None:
            req.used = used_in + used_out

    @precondition(lambda self: self.requests)
    @rule(i=st.integers(0, 50), used_in=st.integers(0, 4000), used_out=st.integers(0, 4000))
    def usage(self, i: int, used_in: int, used_out: int) -> None:
        self._usage(i, used_in, used_out)

    @precondition(lambda self: self.requests)
    @rule(i=st.integers(0, 50), used=st.integers(0, 9000))
    def judge_usage_in_the_request(self, i: int, used: int) -> None:
        """The content filter's judge deployment bills its own usage inside the request."""
        self._usage(i, used, used, deployment="dep_judge_" + self.dep)

    @invariant()
    def window_holds_max_of_estimate_and_usage(self) -> None:
        assert time.time() - self.started < 60  # the counts below span at most two windows
        expected = sum(r.estimate if r.used is None else max(r.estimate, r.used) for r in self.requests)
        prev, _, current, _ = self.run(self.limiter.state(f"tpm/{self.dep}", 60))
        assert prev + current == expected

    def teardown(self) -> None:
        self.run(self.limiter.close())
        pending = asyncio.all_tasks(self.loop)  # charges in flight, if any

        async def cancelled() -> None:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self.loop.run_until_complete(cancelled())
        self.loop.close()


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_tokens_window_is_max_of_estimate_and_usage(storage: str) -> None:
    uri = storage_uri(require_redis() if storage == "redis" else None)

    class OnStorage(Machine):
        def __init__(self) -> None:
            self.uri = uri
            super().__init__()

    run_state_machine_as_test(OnStorage, settings=settings(max_examples=40, stateful_step_count=20, deadline=None,
                                                            suppress_health_check=list(HealthCheck)))


# -- through the gateway ------------------------------------------------------------------------

TPM = 50_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("tpm-settle") / "home", {CHAT_MODEL: "echo"})
    try:
        yield s
    finally:
        s.stop()


def _remaining(c: httpx.Client) -> int:
    """The tokens left, charging nothing: a refused body's answer carries them."""
    r = c.post("/v1/chat/completions", json={"messages": "not a list"})
    assert r.status_code in (400, 422)
    return int(r.headers["x-ratelimit-remaining-tokens"])


def _one_window(room: float = 20.0) -> None:
    """The in-memory windows are aligned to the clock: start where `room` seconds are left."""
    left = 60 - time.time() % 60
    if left < room:
        time.sleep(left + 0.1)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_request_without_max_tokens_is_charged_what_it_used(server: Server, stream: bool) -> None:
    t = make_tenant(server)
    name = unique("tpm")
    key = create_deployment(server, name, CHAT_MODEL, key=t.keys["owner"])["keys"]["primary"]
    with server.client(t.keys["owner"]) as owner:
        ok(owner.patch(f"/api/v1/deployments/{name}", json={"rate_limits": {"tokens_per_minute": TPM}}))
    words = 900  # "a a a ...": 1,799 bytes, estimated 450 tokens; the echo counts 900 and repeats them
    body = {"model": name, "messages": [{"role": "user", "content": " ".join(["a"] * words)}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    _one_window()
    with server.client(key) as c:
        assert _remaining(c) == TPM
        if stream:
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                charged_at_admission = TPM - int(r.headers["x-ratelimit-remaining-tokens"])
                lines = [line for line in r.iter_lines() if line.startswith("data: {")]
            usage = json.loads(lines[-1][len("data: "):])["usage"]
        else:
            r = ok(c.post("/v1/chat/completions", json=body))
            charged_at_admission = TPM - int(r.headers["x-ratelimit-remaining-tokens"])
            usage = r.json()["usage"]
        assert usage["completion_tokens"] == words  # the echo repeats the prompt: no max_tokens cut it
        used = usage["total_tokens"]  # the prompt is 901 tokens: the role counts one word
        assert charged_at_admission < used  # the estimate: the prompt's bytes / 4 + 1,024
        wait_until(lambda: _remaining(c) == TPM - used, 30, 0.05, "the tokens beyond the estimate charged")
        # a request that used less than its estimate stays charged the estimate (never refunded)
        before = _remaining(c)
        r = ok(c.post("/v1/chat/completions", json={"model": name, "max_tokens": 200,
                                                    "messages": [{"role": "user", "content": "hello there"}]}))
        estimate = before - int(r.headers["x-ratelimit-remaining-tokens"])
        assert r.json()["usage"]["total_tokens"] < estimate
        assert _remaining(c) == before - estimate
