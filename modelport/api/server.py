"""Serving the app with uvicorn, with a drain on SIGTERM and SIGINT.

uvicorn alone stops accepting connections on a signal and waits for open ones, but the
application hears of it only at lifespan shutdown, after the last connection closed or after
uvicorn's grace period, when it cancels what is left: a long stream is then cut without a word.
So the first signal also starts the deployments' drain at once (Gateway.begin_drain):
workers give in-flight requests `drain_seconds`, then end them with an explicit error event,
and uvicorn's own grace period is longer than that, so it never has to cut anything.

uvicorn re-raises the signal once it has shut down, which makes the process look killed
(exit status -15 or a KeyboardInterrupt); a drained shutdown is a clean one and exits 0.
A second SIGINT still forces an immediate exit.

Every connection is held to limits (`ConnectionLimits`, from settings), enforced here because
here is where the bytes arrive, before any application code: a request line and headers larger
than `max_header_bytes` get 431, headers not complete within `header_timeout` of the
connection (or of the request's first byte) get 408, a body that pauses longer than
`body_timeout` gets 408 (or the connection closed when its answer already started), a
connection beyond `max_connections` gets 503 and is closed, and an answer the client takes
nothing of for `send_timeout` closes the connection, which ends a stream and frees its worker
slot through the ordinary disconnect path. Each refusal closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("modelport.server")

# Beyond the drain: time for the supervisor to stop each worker and the streams to flush.
SHUTDOWN_MARGIN_SECONDS = 10.0


class _HeadersWithBody:
    """A connection's transport that sends a response's headers together with its first body bytes.

    uvicorn writes the status line and headers when the app sends `http.response.start`, and the
    body at `http.response.body`: two syscalls and, on loopback, two segments, so the client is
    woken twice for one small JSON answer. Profiled on the inference path (benchmarks/
    bench_gateway.py), the header write alone was about 13% of the gateway's CPU per request.
    Here a write that starts a response (b"HTTP/1.1 ...") is held until the next write, which
    takes it along in one syscall; if nothing follows within the same step of the event loop
    (a stream whose first chunk is not ready), it leaves on its own at the end of that step.
    Every other write goes out at once, in order.
    """

    __slots__ = ("_flush_handle", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data = self._held + data
            self._held = None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
        elif data.startswith(b"HTTP/1.1 "):
            self._held = data
            self._flush_handle = self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    send_timeout: float
    max_connections: int


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with response headers and body sent in one write, and the
    connection limits of the module docstring."""

    limits: ConnectionLimits  # set by protocol_class()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # mypy is told to ignore the next line: forwards to the transport
        super().connection_made(_HeadersWithBody(transport, self.loop))  # type: ignore[arg-type]
        self._in_headers = True  # waiting for (the rest of) a request line and headers
        self._header_bytes = 0  # raw bytes received while waiting for them
        self._header_size = 0  # request line and headers, as the parser reports them
        self._refused = False
        self._last_body = 0.0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            log.warning("connection refused: too many open connections", extra={"event": "http.refused",
                                                                               "count": len(self.connections)})
            self._refuse(503, "too_many_connections", "The server has too many open connections; retry shortly.",
                         extra_headers=b"retry-after: 1\r\n")
            return
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._body_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: nothing more is parsed
        super().data_received(data)
        if self._in_headers and not self._refused and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse_large_headers()

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._header_size = 0
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_timed_out)

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            self._header_size += len(url)
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            self._header_size += len(name) + len(value) + 4
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._header_size > self.limits.max_header_bytes:  # arrived at once, in one read
            self._refuse_large_headers()
            return
        super().on_headers_complete()
        cycle = self.cycle
        extensions = {"modelport.abort": lambda: self._abort(cycle)}
        # ASGI extensions are free-form; uvicorn's HTTPScope types their values as dicts only
        self.scope["extensions"] = extensions  # type: ignore[typeddict-item]
        self._last_body = self.loop.time()
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_check)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._last_body = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # -- the limits ---------------------------------------------------------------------

    def _refuse_large_headers(self) -> None:
        self._refuse(431, "request_header_fields_too_large", f"The request line and headers are larger than the "
                     f"{self.limits.max_header_bytes} bytes this server accepts.")

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self._refuse(408, "request_timeout", f"The request's headers did not arrive within "
                         f"{self.limits.header_timeout:g} s.")

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the application has not taken what arrived: not the client's delay
            self._last_body = now
        idle = now - self._last_body
        if idle < self.limits.body_timeout:
            self._body_timer = self.loop.call_later(self.limits.body_timeout - idle, self._body_check)
            return
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(408, "request_timeout", f"The request body paused for more than "
                         f"{self.limits.body_timeout:g} s.")
        else:
            self._abort(self.cycle)

    def _send_timed_out(self) -> None:
        self._send_timer = None
        log.warning("client took nothing of its answer for %g s; connection closed", self.limits.send_timeout,
                    extra={"event": "http.send_timeout"})
        self._abort(self.cycle)

    def _abort(self, cycle: object) -> None:
        """Drop the connection at once; the request's application sees a disconnect."""
        if cycle is not None:
            cycle.disconnected = True  # type: ignore[attr-defined]  # uvicorn's cycle, private
            cycle.message_event.set()  # type: ignore[attr-defined]  # uvicorn's cycle, private
        if not self.transport.is_closing():
            self.transport.abort()

    def _refuse(self, status: int, code: str, message: str, extra_headers: bytes = b"") -> None:
        """Answer `status` in place of the application and close the connection."""
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            if self.cycle.response_started:  # a pipelined request's answer is under way: no room for ours
                self._abort(self.cycle)
                return
            self.cycle.disconnected = True  # the application's own answer, if any, goes nowhere
            self.cycle.message_event.set()
        body = orjson.dumps({"error": {"code": code, "message": message}})
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n%s\r\n%s" % (status, _REASONS[status], len(body), extra_headers,
                                                                    body))
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[_Protocol]:
    return type("LimitedProtocol", (_Protocol,), {"limits": limits})


class EarlySignals:
    """SIGINT and SIGTERM that arrive while the server starts (after `prepare`, before uvicorn
    handles signals): kept, never raised, and handed to the server as soon as it handles them, so
    that it drains and stops as for any other. Before, such a Ctrl-C raised KeyboardInterrupt in
    whatever the start was doing, and twice in loaded full runs (2026-12-03) a server started
    anyway and ignored it (the lost signal's path was not found)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._keep)

    def _keep(self, sig: int, frame: FrameType | None) -> None:
        self.received.append(sig)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None], drain_seconds: float,
                 early: EarlySignals | None = None) -> None:
        super().__init__(config)
        self._drain_seconds = drain_seconds
        self._on_signal = on_signal
        self._early = early
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first and self._loop is not None:
            # A signal handler runs between two bytecodes of the loop's thread (maybe inside a
            # logging call): hand over, and log from the loop.
            self._loop.call_soon_threadsafe(self._drain, signal.Signals(sig).name)

    def _drain(self, signal_name: str) -> None:
        log.info("shutting down on %s: in-flight requests get up to %.0f s", signal_name, self._drain_seconds,
                 extra={"event": "server.drain"})
        self._on_signal()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            for sig in self._early.received if self._early is not None else ():
                self.handle_exit(sig, None)  # a signal that came during the start
            try:
                yield
            finally:
                self._captured_signals.clear()  # drained: exit normally, not by the signal


def run(app: FastAPI, *, host: str, port: int, drain_seconds: float, early: EarlySignals | None = None) -> None:
    """Serve until SIGINT or SIGTERM (`early`: those that came during the start, see EarlySignals)."""
    gateway = app.state.services.gateway
    settings = app.state.services.settings
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes, header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds, send_timeout=settings.send_timeout_seconds,
        max_connections=settings.max_connections)
    # X-Forwarded-For decides the caller's address (deployments' network settings), so it is
    # believed only from the proxies an operator named; with none, uvicorn never reads it.
    proxies = [str(net) for net in settings.trusted_proxies]
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                            http=protocol_class(limits),
                            timeout_graceful_shutdown=int(drain_seconds + SHUTDOWN_MARGIN_SECONDS),
                            proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)
    freeze_startup_heap()
    try:
        DrainingServer(config, on_signal=gateway.begin_drain, drain_seconds=drain_seconds, early=early).run()
    finally:
        if early is not None:
            early.restore()


def freeze_startup_heap() -> None:
    """Take the server's long-lived objects (imported modules, the app, its services: over half a
    million objects once the content filter's torch is loaded) out of the garbage collector's
    sight for good.

    These objects live as long as the process; without this, every full collection walks all of
    them again: about 0.3 s of CPU on the event loop each time, which stalls every request in
    flight and comes sooner the more each request allocates (benchmarks/profile_metering.py counts
    the collector's runs and time). What is garbage now is collected first, then the rest is
    frozen. Modules imported later (the content filter's torch and transformers, loaded with its
    first deployment) are frozen at the end of the first full collection after their import: what
    survived it is live, and the collection just ran, so the freeze costs nothing. Only when new
    modules appeared, so that objects which die later in cycles are seldom kept. Only for the
    serving process (`run`): a test process that builds many apps must not keep each one's cycles."""
    gc.collect()
    gc.freeze()
    modules = [len(sys.modules)]

    def refreeze(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2 and len(sys.modules) != modules[0]:
            modules[0] = len(sys.modules)
            gc.freeze()

    gc.callbacks.append(refreeze)
