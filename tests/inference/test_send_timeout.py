"""A client that stops reading its stream loses it after MODELPORT_SEND_TIMEOUT_SECONDS: the
generation is cancelled in the worker, the pool slot is freed, and the next caller is served.

Before the send timeout, one reader that stopped held the deployment's only slot for the whole
stream (a 32k-token answer: minutes; a reader that never reads: forever), and every other
caller queued behind it. The stream here would run for a minute (32k tokens at 2 ms a token,
each token a 4,000-character word so that the socket buffers fill within a second or two); the
reader takes its headers and then reads nothing, with a small receive buffer.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support.inference import CHAT_MODEL, create_deployment, worker_health, workers
from tests.support.runtimes import FLOOD
from tests.support.server import Server, loopback_client, start_lean
from tests.support.waiting import wait_until

SEND_TIMEOUT = 2.0
WORD = "w" * 4000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("send") / "home", {CHAT_MODEL: FLOOD},
                   MODELPORT_SEND_TIMEOUT_SECONDS=str(SEND_TIMEOUT), MODELPORT_QUEUE_PER_DEPLOYMENT="4")
    try:
        yield s
    finally:
        s.stop()


def stalled_reader(server: Server, key: str) -> socket.socket:
    """Ask for a long stream, read the status line, then read nothing more."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = json.dumps({"model": "flood", "stream": True, "max_tokens": 32768,
                       "messages": [{"role": "user", "content": WORD}]}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer " + key.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\n\r\n" + body)
    assert sock.recv(12) == b"HTTP/1.1 200"
    return sock


def test_a_reader_that_stops_frees_the_slot_for_the_next_caller(server: Server):
    key = create_deployment(server, "flood", CHAT_MODEL)["keys"]["primary"]
    (worker,) = workers(server).values()
    base = worker.health.tokens_generated_total
    sock = stalled_reader(server, key)
    try:
        wait_until(lambda: worker_health(worker.socket).active_generations == 1, 30, 0.05, "the stream to start")
        # The next caller waits for the only slot; it is served once the stalled stream is dropped.
        with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            r = c.post("/v1/chat/completions", json={"model": "flood", "max_tokens": 2,
                                                      "messages": [{"role": "user", "content": "next please"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "next please"
        # The stalled stream's generation was cancelled in the worker, far from its 32,768 tokens.
        wait_until(lambda: worker_health(worker.socket).active_generations == 0, 30, 0.05, "the worker to be idle")
        generated = worker_health(worker.socket).tokens_generated_total - base
        assert generated < 32768 // 2, generated
        wait_until(lambda: worker_health(worker.socket).tokens_generated_total - base == generated, 5, 0.5,
                 "generation to stay stopped")
    finally:
        sock.close()
    assert "client took nothing of its answer" in server.logs()
    assert WORD not in server.logs()


def test_a_slow_but_steady_reader_keeps_its_stream(server: Server):
    """Pausing for less than the timeout now and then, for longer than the timeout in all: not cut."""
    key = create_deployment(server, "steady", CHAT_MODEL)["keys"]["primary"]
    lines = []
    with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions",
                      json={"model": "steady", "stream": True, "max_tokens": 300,
                            "messages": [{"role": "user", "content": WORD}]}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    if len(lines) % 60 == 0:
                        time.sleep(SEND_TIMEOUT / 4)
    assert lines[-1] == "data: [DONE]"
    assert sum(WORD in line for line in lines) == 300
