"""Limits of the HTTP server, tested with raw sockets on loopback against a real server: bodies
(413, before they are read, and authentication before a body), headers (431), slow headers and
bodies (408), the connection limit (503), and the memory a hostile body costs.

Memory is the server process's peak resident set (VmHWM), reset through /proc/PID/clear_refs
before each hostile request: a regression that reads a 200 MB body costs hundreds of MiB
(390 MiB measured before the limit existed), the bound here is 48 MiB.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ROOT, Server, lean_server

BODY_LIMIT = 1024 * 1024
HEADER_LIMIT = 8 * 1024
TIMEOUT = 2.0
MAX_CONNECTIONS = 12
HUGE = 200 * 1000 * 1000
MEMORY_BOUND = 48 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory, MODELPORT_MAX_CONTROL_REQUEST_BYTES=str(BODY_LIMIT),
                           MODELPORT_MAX_HEADER_BYTES=str(HEADER_LIMIT), MODELPORT_HEADER_TIMEOUT_SECONDS=str(TIMEOUT),
                           MODELPORT_BODY_TIMEOUT_SECONDS=str(TIMEOUT),
                           MODELPORT_MAX_CONNECTIONS=str(MAX_CONNECTIONS))


# -- raw HTTP ------------------------------------------------------------------------------


def connect(server: Server, timeout: float = 30) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or resets) the connection."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def status_of(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert match, raw[:200]
    return int(match.group(1))


def json_body(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def headers(method: str, path: str, key: str | None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n{extra}\r\n".encode()


def peak_rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current resident set


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def current_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def send_while_reading(sock: socket.socket, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send `head` then `chunks` while another thread reads the answer (so that the answer is read
    even when the server resets the connection afterwards); returns (answer, body bytes sent)."""
    answer: list[bytes] = []
    reader = threading.Thread(target=lambda: answer.append(read_all(sock)))
    sent = 0
    sock.sendall(head)
    reader.start()
    try:
        for chunk in chunks:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the server closed the connection: it stopped reading
    reader.join(60)
    sock.close()
    return answer[0] if answer else b"", sent


def chunked(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    block = b"%x\r\n" % piece + b"x" * piece + b"\r\n"
    for _ in range(total // piece):
        yield block
    yield b"0\r\n\r\n"


def plain(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    block = b"x" * piece
    for _ in range(total // piece):
        yield block


# -- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["admin", None], ids=["authenticated", "anonymous"])
def test_declared_huge_body_is_refused_before_it_is_read(server: Server, key: str | None):
    """413 with a key (401 without one) as soon as the headers arrive; the body is never sent."""
    peak_rss_reset(server.proc.pid)
    with connect(server) as s:
        s.sendall(headers("POST", "/api/v1/deployments", server.admin_key if key else None,
                          f"Content-Length: {HUGE}\r\n"))
        raw = read_all(s)  # the server answers and closes without waiting for a byte of the body
    if key:
        assert status_of(raw) == 413
        err = json_body(raw)["error"]
        assert err["code"] == "payload_too_large" and str(BODY_LIMIT) in err["message"]
        assert "MODELPORT_MAX_CONTROL_REQUEST_BYTES" in err["message"]
    else:
        assert status_of(raw) == 401 and json_body(raw)["error"]["code"] == "unauthenticated"
    assert b"connection: close" in raw.lower()
    assert peak_rss(server.proc.pid) - current_rss(server.proc.pid) < MEMORY_BOUND


@pytest.mark.parametrize("key", ["admin", None], ids=["authenticated", "anonymous"])
@pytest.mark.parametrize("encoding", ["chunked", "declared"])
def test_streamed_huge_body_costs_no_memory(server: Server, key: str | None, encoding: str):
    """200 MB sent for real (chunked, or with a Content-Length under the limit that the body
    then overruns): refused, the connection closed after at most the limit was read, and the
    server's peak memory stays flat."""
    pid = server.proc.pid
    before = current_rss(pid)
    peak_rss_reset(pid)
    extra = "Transfer-Encoding: chunked\r\n" if encoding == "chunked" else f"Content-Length: {BODY_LIMIT}\r\n"
    body = chunked(HUGE) if encoding == "chunked" else plain(HUGE)
    raw, sent = send_while_reading(connect(server), headers("POST", "/api/v1/deployments",
                                                            server.admin_key if key else None, extra), body)
    assert peak_rss(pid) - before < MEMORY_BOUND, f"{(peak_rss(pid) - before) // 2**20} MiB"
    assert sent < HUGE  # the server stopped reading and closed
    if key and encoding == "chunked":
        assert status_of(raw) == 413
    elif key:
        # the declared length is within the limit: the body is read up to it, and what follows is
        # not a request; either way nothing of the 200 MB is kept
        assert status_of(raw) in (400, 413, 422)
    else:
        assert status_of(raw) == 401


def test_a_body_just_under_the_limit_is_served(server: Server):
    base = {"name": "near-limit", "format": "gguf", "files": [{"path": "m.gguf", "size": 1}]}
    with server.client() as c:
        r = c.post("/api/v1/model-uploads", json={**base, "padding": "x" * (BODY_LIMIT - 1024)})
        assert r.status_code == 422 and r.json()["error"]["field"] == "padding"  # read and parsed
        r = c.post("/api/v1/model-uploads", json={**base, "padding": "x" * (BODY_LIMIT + 1)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_streaming_upload_routes_keep_their_own_limits(server: Server):
    """A dataset of 1.5 MB (beyond the control-plane body limit) streams in as before."""
    row = json.dumps({"messages": [{"role": "user", "content": "q" * 500}, {"role": "assistant", "content": "a"}]})
    data = ((row + "\n") * (3 * BODY_LIMIT // 2 // len(row))).encode()
    assert len(data) > BODY_LIMIT
    with server.client() as c:
        r = c.post("/api/v1/datasets", params={"name": "big-enough"}, content=data,
                   headers={"Content-Type": "application/jsonl"})
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(data)


def test_a_deployment_key_is_refused_before_the_body(server: Server):
    with connect(server) as s:
        s.sendall(headers("POST", "/api/v1/deployments", "mpd_" + "0" * 16 + "_" + "x" * 43,
                          f"Content-Length: {HUGE}\r\n"))
        raw = read_all(s)
    assert status_of(raw) == 401 and "inference routes only" in json_body(raw)["error"]["message"]


# -- headers ---------------------------------------------------------------------------------


def test_huge_headers_are_431(server: Server):
    pid = server.proc.pid
    before = current_rss(pid)
    peak_rss_reset(pid)
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: "
    raw, sent = send_while_reading(connect(server), head, plain(16 * 1024 * 1024, 4096))
    assert status_of(raw) == 431
    assert json_body(raw)["error"]["code"] == "request_header_fields_too_large"
    assert sent < 16 * 1024 * 1024
    assert peak_rss(pid) - before < MEMORY_BOUND


def test_headers_just_under_the_limit_are_served(server: Server):
    with connect(server) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Pad: "
                  + b"p" * (HEADER_LIMIT - 200) + b"\r\n\r\n")
        assert status_of(read_all(s)) == 200
    with connect(server) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"p" * (HEADER_LIMIT + 100) + b"\r\n\r\n")
        assert status_of(read_all(s)) == 431


# -- slow clients ----------------------------------------------------------------------------


def trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    for i in range(len(data)):
        if stop.wait(every):
            return
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            return


def test_slowloris_headers_get_408_within_the_timeout(server: Server):
    """One header byte every 0.2 s: the headers are never complete, the connection ends."""
    s = connect(server, timeout=TIMEOUT + 30)
    stop = threading.Event()
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    t = threading.Thread(target=trickle, args=(s, b"X-Slow: " + b"a" * 1000 + b"\r\n\r\n", 0.2, stop))
    started = time.monotonic()
    t.start()
    raw = read_all(s)
    waited = time.monotonic() - started
    stop.set()
    t.join()
    s.close()
    assert status_of(raw) == 408 and json_body(raw)["error"]["code"] == "request_timeout"
    assert waited < TIMEOUT + 25  # a deadline far beyond the timeout, not a measurement


def test_an_idle_connection_gets_408(server: Server):
    with connect(server, timeout=TIMEOUT + 30) as s:
        assert status_of(read_all(s)) == 408


def test_a_stalled_body_gets_408(server: Server):
    with connect(server, timeout=TIMEOUT + 30) as s:
        s.sendall(headers("POST", "/api/v1/deployments", server.admin_key, "Content-Length: 100\r\n") + b'{"na')
        raw = read_all(s)
    assert status_of(raw) == 408 and "body paused" in json_body(raw)["error"]["message"]


def test_a_slow_but_steady_body_is_not_cut(server: Server):
    """Bytes every 0.5 s (well inside the pause limit) for longer than the pause limit in all."""
    body = json.dumps({"name": "steady-ws"}).encode()
    with connect(server, timeout=60) as s:
        s.sendall(headers("POST", "/api/v1/workspaces", server.admin_key,
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n"))
        for i in range(0, len(body), 4):
            time.sleep(0.5)
            s.sendall(body[i:i + 4])
        raw = read_all(s)
    assert status_of(raw) == 201, raw[:300]


# -- connections -----------------------------------------------------------------------------


def test_connections_over_the_limit_are_refused(server: Server):
    """Three more idle connections than the limit: three are refused at once with 503; the
    others are accepted (and end with 408 when they send nothing). Then a new one is served."""
    held = [connect(server, timeout=TIMEOUT + 30) for _ in range(MAX_CONNECTIONS + 3)]
    try:
        answers = [status_of(read_all(s)) for s in held]
    finally:
        for s in held:
            s.close()
    assert answers.count(503) >= 3 and set(answers) <= {503, 408}, answers
    refused = next(s for s, a in zip(held, answers, strict=True) if a == 503)
    assert refused is not None

    def served() -> bool:
        with connect(server) as again:
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            return status_of(read_all(again)) == 200

    deadline = time.monotonic() + 30
    while not served():
        assert time.monotonic() < deadline, "no connection was accepted after the others closed"
        time.sleep(0.1)


def test_every_limit_is_a_documented_setting():
    readme = (ROOT / "README.md").read_text()
    for name in ("MAX_CONTROL_REQUEST_BYTES", "MAX_HEADER_BYTES", "HEADER_TIMEOUT_SECONDS", "BODY_TIMEOUT_SECONDS",
                 "SEND_TIMEOUT_SECONDS", "MAX_CONNECTIONS", "MAX_DEDICATED_INSTANCES_PER_WORKSPACE",
                 "MAX_OPEN_UPLOADS_PER_WORKSPACE", "MAX_ACTIVE_FINETUNE_JOBS_PER_WORKSPACE", "UPLOAD_SWEEP_SECONDS",
                 "UPLOAD_TTL_SECONDS", "SCAN_CONCURRENCY"):
        assert f"`MODELPORT_{name}`" in readme, name
