"""`WorkerClient`: the gateway's side of the worker protocol (see protocol.py).

HTTP/1.1 over the worker's Unix socket, with keep-alive connections kept per worker. The
client is a small asyncio protocol around `httptools` (the parser uvicorn uses) instead of an
aiohttp session: on the gateway's request path aiohttp's client cost about 340 µs of CPU per
call against about 85 µs for this one (benchmarks/bench_gateway.py; the worker call was a
quarter of the gateway's CPU per request). It speaks only what the worker speaks: one request
at a time per connection, a JSON body, a JSON or NDJSON answer (fixed length or chunked).

Any failure to reach the worker, or a stream cut before its last event, becomes
`ServiceUnavailable`: the gateway answers 503 and the client may retry; errors the worker
reports keep their class (InvalidInput stays a 400). Leaving a `generate()` iteration early
(break, aclose, task cancelled) closes that connection, which the worker notices and stops
decoding. A connection goes back to the pool only after its answer was read to the end.

Every new connection checks who serves the socket (SO_PEERCRED: the uid of the process that
listens on it, as the kernel recorded it) against `peer_uid`, the uid the worker's sandbox runs
under, and is refused otherwise: a socket swapped in by another local user never receives a
prompt. `peer_uid=None` checks nothing; only tools that look at workers from outside use it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httptools
import orjson

from modelport import errors
from modelport.workers.protocol import (
    EmbedResponse,
    GenerateBody,
    Generated,
    Health,
    TokenCount,
    error_from_wire,
)

log = logging.getLogger("modelport.workers")

_LOST = "the model worker stopped while answering; retry the request"
_UNREACHABLE = "the model worker is not reachable (starting, restarting or stopped); retry shortly"


@dataclass(frozen=True, slots=True)
class TextDelta:
    index: int
    text: str
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's per-token objects, when asked for
    generated: int | None = None  # tokens generated for this choice so far, when the runtime counts


@dataclass(frozen=True, slots=True)
class ChoiceFinished:
    index: int
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """Always the last event of a complete stream."""

    prompt_tokens: int
    completion_tokens: int


GenerateEvent = TextDelta | ChoiceFinished | StreamUsage


@dataclass(eq=False, slots=True)
class Ticket:
    """One generation as its worker knows it: the `id` it was sent with, and the client of the
    worker that was lent for it (set when the request leaves for that worker). After a cut, the
    gateway asks that worker (`WorkerClient.cancel`) what the generation produced."""

    id: str = field(default_factory=lambda: secrets.token_hex(12))
    client: WorkerClient | None = None

    async def generated(self, timeout: float) -> int | None:
        """Stop the generation and return the tokens it produced; None when no worker was lent,
        or the worker does not answer within `timeout` (gone, restarted, stuck)."""
        if self.client is None:
            return None
        try:
            return await self.client.cancel(self.id, timeout=timeout)
        except errors.ModelportError:
            return None


_READ_HIGH = 1 << 20  # unread answer bytes beyond which the worker is not read from (backpressure)
_READ_LOW = 1 << 16


class _Broken(Exception):
    """The connection ended, or the worker's answer was not HTTP, before the answer was whole."""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a worker; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.buffer = bytearray()
        self.headers_done = False
        self.complete = False
        self.received = False  # any byte of the current answer
        self.lost = False
        self.keep_alive = False
        self.when_complete: Any = None  # callback once the answer is read to its end
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a Unix stream gives a Transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            if self.parser is None:
                raise httptools.HttpParserError("bytes before any request")
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()  # not the worker protocol: drop it
        if len(self.buffer) > _READ_HIGH and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        self.when_complete = None
        self._wake()

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()  # type: ignore[union-attr]  # set while a request is in flight
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.buffer += body

    def on_message_complete(self) -> None:
        # Read now: once the message is complete the parser is reset for the next one.
        # mypy is told to ignore the next line: set while a request is in flight
        self.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]
        self.complete = True
        if self.when_complete is not None:
            callback, self.when_complete = self.when_complete, None
            callback(self)

    # -- used by WorkerClient
    def send(self, request: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.buffer.clear()
        self.headers_done = self.complete = self.received = self.keep_alive = False
        self.transport.write(request)  # type: ignore[union-attr]  # set by connection_made

    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.buffer and self.usable()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def headers(self) -> None:
        while not self.headers_done:
            if self.lost:
                raise _Broken
            await self._wait()

    async def readline(self) -> bytes | None:
        """The next line of the body; None when the body (or the connection) ended without one."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                if self._paused and len(self.buffer) < _READ_LOW and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return line
            if self.complete or self.lost:
                return None
            await self._wait()

    async def read_all(self) -> bytes:
        while not self.complete:
            if self.lost:
                raise _Broken
            if self._paused and self.transport is not None:  # a whole body is wanted: read on
                self._paused = False
                self.transport.resume_reading()
            await self._wait()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def until_complete(self) -> None:
        """Wait for the end of the answer (or of the connection); then it can be pooled again."""
        while not self.complete and not self.lost:
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            await self._wait()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _request(method: str, path: str, payload: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: worker\r\n"
    if payload is None:
        return (head + "Content-Length: 0\r\n\r\n").encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload


class WorkerClient:
    def __init__(self, socket_path: str | Path, *, peer_uid: int | None = None, connect_timeout: float = 5.0,
                 request_timeout: float | None = None) -> None:
        self.socket_path = str(socket_path)
        self.peer_uid = peer_uid
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closed = False

    async def close(self) -> None:
        """Close the connections for good; later calls raise ServiceUnavailable. Calls in
        flight end with ServiceUnavailable."""
        self._closed = True
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()
        self._busy.clear()

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connections
    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, conn = await loop.create_unix_connection(_Connection, self.socket_path)
        except (OSError, TimeoutError) as exc:
            raise errors.ServiceUnavailable(_UNREACHABLE) from exc
        if self.peer_uid is not None:
            sock = transport.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", creds)
            if uid != self.peer_uid:
                transport.close()
                log.warning("refused a worker socket served by uid %d (pid %d), not by the worker's uid %d",
                            uid, pid, self.peer_uid)
                raise errors.ServiceUnavailable("the model worker's socket is not served by the worker itself; "
                                                "the connection was refused")
        return conn

    async def _send(self, method: str, path: str, payload: bytes | None) -> _Connection:
        """Send one request; return its connection once the answer's status line and headers arrived."""
        if self._closed:  # the supervisor closes a stopped worker's client for good
            raise errors.ServiceUnavailable("the model worker was stopped; its deployment has no worker here")
        request = _request(method, path, payload)
        conn: _Connection | None = None
        while self._idle:
            candidate = self._idle.pop()
            if candidate.usable():
                conn = candidate
                break
            candidate.close()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect()
            self._busy.add(conn)
            try:
                conn.send(request)
                await conn.headers()
                return conn
            except _Broken:
                self._busy.discard(conn)
                conn.close()
                if reused and not conn.received:  # a kept-alive connection the worker had closed
                    conn, reused = None, False
                    continue
                raise errors.ServiceUnavailable(_UNREACHABLE) from None
            except BaseException:
                self._busy.discard(conn)
                conn.close()
                raise

    def _release(self, conn: _Connection) -> None:
        """Back to the pool once its answer was read to the end; otherwise the connection is closed."""
        if not conn.complete and not conn.lost:
            conn.when_complete = self._release  # the last bytes (end of the chunked body) are on their way
            return
        self._busy.discard(conn)
        if conn.reusable() and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()

    def _drop(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()

    async def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        payload = orjson.dumps(body) if body is not None else None
        try:
            async with asyncio.timeout(timeout if timeout is not None else self._request_timeout):
                conn = await self._send(method, path, payload)
                try:
                    data = await conn.read_all()
                except BaseException:
                    self._drop(conn)
                    raise
        except (_Broken, TimeoutError) as exc:
            raise errors.ServiceUnavailable(_UNREACHABLE) from exc
        self._release(conn)
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise errors.ServiceUnavailable(_LOST) from exc
        if conn.status >= 400:
            raise error_from_wire(**answer["error"])
        return answer

    async def health(self, *, timeout: float | None = None) -> Health:
        return Health.model_validate(await self._call("GET", "/health", timeout=timeout))

    async def count_tokens(self, *, messages: Sequence[dict[str, Any]] | None = None,
                           prompt: str | None = None, input: Sequence[str] | None = None,
                           tools: Sequence[dict[str, Any]] | None = None) -> TokenCount:
        """Tokens of a chat (`messages`, shown `tools`), a text `prompt`, or each embeddings `input`."""
        body: dict[str, Any] = {}
        if tools:
            body["tools"] = list(tools)
        if messages is not None:
            body["messages"] = list(messages)
        if prompt is not None:
            body["prompt"] = prompt
        if input is not None:
            body["input"] = list(input)
        return TokenCount.model_validate(await self._call("POST", "/tokenize", body))

    async def embed(self, texts: Sequence[str]) -> EmbedResponse:
        return EmbedResponse.model_validate(await self._call("POST", "/embed", {"input": list(texts)}))

    async def cancel(self, generation_id: str, *, timeout: float) -> int:
        """Stop the generation sent with this id (if it still runs) and return the completion
        tokens it produced. Raises ServiceUnavailable when the worker does not answer in time,
        NotFound when it does not know the id (a restarted worker)."""
        answer = await self._call("POST", "/cancel", {"id": generation_id}, timeout=timeout)
        return Generated.model_validate(answer).completion_tokens

    async def generate(self, body: GenerateBody) -> AsyncIterator[GenerateEvent]:
        """Stream events; ends with StreamUsage. Raises the worker's error, or
        ServiceUnavailable when the worker cannot be reached or dies mid-stream."""
        conn = await self._send("POST", "/generate", body.model_dump_json(exclude_defaults=True).encode())
        complete = False
        try:
            if conn.status >= 400:
                try:
                    data = orjson.loads(await conn.read_all())
                except (_Broken, orjson.JSONDecodeError) as exc:
                    raise errors.ServiceUnavailable(_LOST) from exc
                complete = True
                raise error_from_wire(**data["error"])
            while True:
                line = await conn.readline()
                if line is None:
                    raise errors.ServiceUnavailable(_LOST)
                event = orjson.loads(line)
                kind = event["type"]
                if kind == "delta":
                    yield TextDelta(event["index"], event["text"], event.get("logprobs"), event.get("generated"))
                elif kind == "finish":
                    yield ChoiceFinished(event["index"], event["finish_reason"], event["completion_tokens"])
                elif kind == "usage":
                    complete = True
                    await conn.until_complete()  # the end of the chunked body is right behind it
                    yield StreamUsage(event["prompt_tokens"], event["completion_tokens"])
                    return
                else:
                    complete = True
                    raise error_from_wire(event["code"], event["message"], event.get("field"))
        finally:
            if complete:
                self._release(conn)
            else:
                self._drop(conn)  # the worker sees the disconnect and stops decoding
