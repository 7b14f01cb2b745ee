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

log = logging.getLogger("modelport.server")

# Beyond the drain: time for the supervisor to stop each worker and the streams to flush.
SHUTDOWN_MARGIN_SECONDS = 10.0


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
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(drain_seconds + SHUTDOWN_MARGIN_SECONDS))
    DrainingServer(config, on_signal=manager.begin_drain, drain_seconds=drain_seconds).run()

