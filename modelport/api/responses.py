"""Responses that need more than Starlette's: a stream that always closes its generator, and a
download that is verified while it is sent.

`ClosingStreamingResponse` closes its body generator when the response ends in any way.
Starlette's does not: when the client goes away (or the server drops it after the send
timeout) while the generator waits at a `yield` for a send to finish, the generator is left
suspended until the garbage collector finds it, and with it whatever it holds (an inference
stream holds a worker pool slot and the worker's generation).

`VerifiedDownload` sends a model file read through `catalog.downloads.VerifiedRead` with its
exact Content-Length. When the read finds, at the end, that the stored bytes no longer match
the recorded sha256, the last chunk is never sent and the connection is aborted (the server's
`modelport.abort` extension; under another ASGI server the error is raised, which closes the
connection too): the client sees a body shorter than its Content-Length, never a complete
file with the wrong hash. A client that goes away stops the read.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import anyio
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from modelport.catalog.downloads import VerifiedRead
from modelport.errors import IntegrityError
from modelport.offload import run_blocking

log = logging.getLogger("modelport.api")


def abort_connection(scope: Scope) -> bool:
    """Drop the client's connection at once, through the server's extension; False when the
    server offers none."""
    abort = scope.get("extensions", {}).get("modelport.abort")
    if abort is None:
        return False
    abort()
    return True


class ClosingStreamingResponse(StreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


class VerifiedDownload(ClosingStreamingResponse):
    def __init__(self, read: VerifiedRead) -> None:
        f = read.file
        base = f.name.rsplit("/", 1)[-1]
        super().__init__(
            self._chunks(read), media_type="application/octet-stream",
            headers={"Content-Length": str(f.size),
                     "Content-Disposition": f"attachment; filename*=utf-8''{quote(base)}",
                     "X-Modelport-Sha256": f.sha256, "X-Modelport-File": quote(f.name, safe="/")},
            background=BackgroundTask(read.close),
        )
        self._scope: Scope = {}

    @staticmethod
    async def _chunks(read: VerifiedRead):
        yield read.first
        chunks = iter(read)
        while (chunk := await run_blocking(next, chunks, None)) is not None:
            yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope = scope
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except IntegrityError:
            if abort_connection(self._scope):
                return  # logged where it was found; the client gets a body short of its Content-Length
            raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})
