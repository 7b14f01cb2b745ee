"""Serving the app with uvicorn, with a drain on SIGTERM and SIGINT.

uvicorn alone stops accepting connections on a signal and waits for open ones, but the
application hears of it only at lifespan shutdown, after the last connection closed or after
uvicorn's grace period, when it cancels what is left: a long stream is then cut without a word.
So the first signal also starts the deployments' drain at once (DeploymentManager.begin_drain):
workers give in-flight requests `drain_seconds`, then end them with an explicit error event,
and uvicorn's own grace period is longer than that, so it never has to cut anything.

uvicorn re-raises the signal once it has shut down, which makes the process look killed
(exit status -15 or a KeyboardInterrupt); a drained shutdown is a clean one and exits 0.
A second SIGINT still forces an immediate exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Generator
from types import FrameType

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


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with response headers and body sent in one write."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_HeadersWithBody(transport, self.loop))  # type: ignore[arg-type]


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None], drain_seconds: float) -> None:
        super().__init__(config)
        self._drain_seconds = drain_seconds
        self._on_signal = on_signal
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
            try:
                yield
            finally:
                self._captured_signals.clear()  # drained: exit normally, not by the signal


def run(app: FastAPI, *, host: str, port: int, drain_seconds: float) -> None:
    manager = app.state.services.manager
    # X-Forwarded-For decides the caller's address (deployments' network settings), so it is
    # believed only from the proxies an operator named; with none, uvicorn never reads it.
    proxies = [str(net) for net in app.state.services.settings.trusted_proxies]
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on", http=_Protocol,
                            timeout_graceful_shutdown=int(drain_seconds + SHUTDOWN_MARGIN_SECONDS),
                            proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)
    DrainingServer(config, on_signal=manager.begin_drain, drain_seconds=drain_seconds).run()

