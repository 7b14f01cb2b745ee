"""A client that goes away mid-stream stops the generation in the worker; SIGTERM and SIGINT
drain the server: in-flight streams finish, or end with an explicit error event once the drain
time is over, and the server exits 0 with its workers gone.

Echo runtimes at 40 ms a token make a request last long enough to act on while it runs; the
worker's own counters (over its socket) show what it generated.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.inference import CHAT_MODEL, alive, chat_body, create_deployment, worker_health, workers
from tests.support.runtimes import SLOW
from tests.support.server import Server, loopback_client, start_lean
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("disconnect") / "home", {CHAT_MODEL: SLOW}, MODELPORT_DRAIN_SECONDS="2")
    try:
        yield s
    finally:
        s.stop()


def test_client_disconnect_mid_stream_stops_generation_in_the_worker(server: Server):
    key = create_deployment(server, "talker", CHAT_MODEL)["keys"]["primary"]
    (worker,) = workers(server).values()
    base = worker.health.tokens_generated_total
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
        stream = c.chat.completions.create(model="talker", messages=[{"role": "user", "content": "la"}],
                                           max_tokens=500, stream=True)  # 20 s if nobody stopped it
        received = 0
        for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].delta.content)
            if received == 3:
                break
        stream.close()
    wait_until(lambda: worker_health(worker.socket).active_generations == 0, 30, 0.05,
               "the worker to stop generating")
    stopped_at = worker_health(worker.socket).tokens_generated_total - base
    # 3 tokens were read; a second more at 40 ms a token is 25. Far from the 500 asked for (a
    # count, not a clock: it only fails if generation went on for seconds).
    assert 3 <= stopped_at < 100, stopped_at
    wait_until(lambda: worker_health(worker.socket).tokens_generated_total - base == stopped_at, 5)
    # the worker is free for the next caller at once
    with server.client(key) as http:
        r = http.post("/v1/chat/completions", json=chat_body("next please", max_tokens=2))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "next please"


def test_abandoned_non_streamed_requests_are_not_generated(server: Server):
    """A caller that gives up (its timeout) while its request waits in the queue, or while it is
    being generated, costs the worker nothing more: nobody would read the answer."""
    key = create_deployment(server, "queued", CHAT_MODEL)["keys"]["primary"]
    (worker,) = workers(server).values()
    base = worker.health.tokens_generated_total
    done = threading.Event()

    def long_call() -> None:
        with server.client(key) as http:
            assert http.post("/v1/chat/completions", json=chat_body("x", max_tokens=40)).status_code == 200  # 1.6 s
        done.set()

    t = threading.Thread(target=long_call)
    t.start()
    wait_until(lambda: worker_health(worker.socket).active_generations == 1, 30, 0.02, "the long call to run")
    with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):  # gives up while queued behind the long call
            http.post("/v1/chat/completions", json=chat_body("gone", max_tokens=200))
    t.join(60)
    assert done.is_set()
    with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):  # gives up while its answer is being generated
            http.post("/v1/chat/completions", json=chat_body("gone", max_tokens=200))
    wait_until(lambda: worker_health(worker.socket).active_generations == 0, 30, 0.05, "the worker to be idle")
    generated = worker_health(worker.socket).tokens_generated_total - base
    assert 40 <= generated < 40 + 100, generated  # not 40 + 200 + 200


def _read_sse(server: Server, key: str, max_tokens: int, started: threading.Event, out: list[str]) -> None:
    with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        with c.stream("POST", "/v1/chat/completions",
                      json=chat_body("tick tock", max_tokens=max_tokens, stream=True)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    out.append(line)
                    if len(out) == 3:
                        started.set()


def _drain_on_signal(s: Server, sig: signal.Signals) -> None:
    """Two streams are running when the signal arrives: a short one (1.2 s) finishes with
    [DONE]; a long one (40 s) is ended after the drain time with an explicit error event."""
    key = create_deployment(s, "drained", CHAT_MODEL, type="dedicated", instances=2)["keys"]["primary"]
    pids = {w.health.pid for w in workers(s).values()}
    short: list[str] = []
    long: list[str] = []
    events = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=_read_sse, args=(s, key, 30, events[0], short)),
               threading.Thread(target=_read_sse, args=(s, key, 1000, events[1], long))]
    for t in threads:
        t.start()
    for e in events:
        assert e.wait(60)
    s.proc.send_signal(sig)
    for t in threads:
        t.join(120)
    assert s.proc.wait(120) == 0, s.logs()[-3000:]
    assert short[-1] == "data: [DONE]"
    assert sum('"content"' in line for line in short) >= 30
    last = json.loads(long[-1].removeprefix("data: "))
    assert last["error"]["code"] == "service_unavailable" and "[DONE]" not in long[-1], long[-3:]
    assert len(long) < 500  # ended by the drain, not by running to its end
    assert not any(alive(p) for p in pids)


def test_sigterm_drains_in_flight_streams_and_exits_0(tmp_path: Path):
    s = start_lean(tmp_path / "home", {CHAT_MODEL: SLOW}, MODELPORT_DRAIN_SECONDS="2")
    try:
        _drain_on_signal(s, signal.SIGTERM)
    finally:
        s.stop()


def test_sigint_drains_in_flight_streams_and_exits_0(tmp_path: Path):
    """Its own server, like SIGTERM's: stopping the module's server would fail the tests after it."""
    s = start_lean(tmp_path / "home", {CHAT_MODEL: SLOW}, MODELPORT_DRAIN_SECONDS="2")
    try:
        _drain_on_signal(s, signal.SIGINT)
    finally:
        s.stop()
