"""The gateway's transport wrapper (modelport.api.server._HeadersWithBody): response headers leave
with the first body bytes in one write, a lone header block still leaves at the end of the event
loop step, and nothing is reordered or lost on close. The transport underneath is a recording
stand-in for the socket transport (what is observed is exactly the sequence of writes)."""

from __future__ import annotations

import asyncio

from modelport.api.server import _HeadersWithBody


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_headers_and_body_leave_in_one_write() -> None:
    async def run() -> list[bytes]:
        raw = Recording()
        t = _HeadersWithBody(raw, asyncio.get_running_loop())
        t.write(HEAD)
        assert raw.writes == []  # held
        t.write(b"{}")
        await asyncio.sleep(0)
        return raw.writes

    assert asyncio.run(run()) == [HEAD + b"{}"]


def test_a_lone_header_block_leaves_at_the_end_of_the_step_and_order_is_kept() -> None:
    async def run() -> list[bytes]:
        raw = Recording()
        t = _HeadersWithBody(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await asyncio.sleep(0)  # the stream's first chunk is not ready yet
        assert len(raw.writes) == 1
        t.write(b"5\r\nhello\r\n")
        t.write(b"0\r\n\r\n")
        assert t.get_extra_info("peername") == ("127.0.0.1", 5)  # everything else is the transport's
        return raw.writes

    writes = asyncio.run(run())
    assert writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"5\r\nhello\r\n", b"0\r\n\r\n"]


def test_close_sends_what_is_held_first() -> None:
    async def run() -> Recording:
        raw = Recording()
        t = _HeadersWithBody(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        t.close()
        await asyncio.sleep(0)
        return raw

    raw = asyncio.run(run())
    assert raw.writes == [b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"] and raw.closed
