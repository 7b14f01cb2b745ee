"""The AEAD layer: AES-256-GCM, and the STREAM construction for chunked objects.

`Aead` is AES-256-GCM from `cryptography` restricted to what the datastore uses: 32-byte keys,
96-bit nonces, 128-bit tags. Anything else is refused up front (`cryptography` itself accepts
nonces of 8 to 128 bytes), so a wrong parameter cannot silently weaken a layer. The Wycheproof
test drives this class.

Large objects are cut into fixed-size chunks, each sealed on its own (Hoang, Reyhanitabar,
Rogaway, Vizar, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", the
STREAM construction): the nonce of chunk i is

    nonce prefix (7 random bytes, in the object header) | i (u32 big-endian) | final flag (1 byte)

so a reordered chunk fails (wrong i), a stream cut at a chunk boundary fails (its last chunk was
sealed with final = 0) and one with chunks appended fails (the real last chunk was sealed with
final = 1). Memory stays bounded by a few chunks whatever the object size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelport.datastore.errors import CorruptObject

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
STREAM_PREFIX_SIZE = 7
MAX_CHUNKS = 2**32

Buffer = bytes | bytearray | memoryview


class Aead:
    """AES-256-GCM with 96-bit nonces and 128-bit tags, nothing else."""

    __slots__ = ("_gcm",)

    def __init__(self, key: Buffer) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("AES-256-GCM takes a 32-byte key")
        self._gcm = AESGCM(bytes(key))

    def seal(self, nonce: Buffer, plaintext: Buffer, aad: Buffer) -> bytes:
        _check_nonce(nonce)
        return self._gcm.encrypt(nonce, plaintext, aad)

    def open(self, nonce: Buffer, ciphertext: Buffer, aad: Buffer) -> bytes:
        """Decrypt and verify; CorruptObject on any failure, and no plaintext is returned."""
        _check_nonce(nonce)
        if len(ciphertext) < TAG_SIZE:
            raise CorruptObject("a ciphertext is shorter than its authentication tag")
        try:
            return self._gcm.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise CorruptObject(_AUTH_FAILED) from None

    def seal_into(self, nonce: Buffer, plaintext: Buffer, aad: Buffer, out: memoryview | bytearray) -> None:
        """Like seal, into `out` (exactly len(plaintext) + 16 bytes): no allocation per chunk."""
        _check_nonce(nonce)
        self._gcm.encrypt_into(nonce, plaintext, aad, out)

    def open_into(self, nonce: Buffer, ciphertext: Buffer, aad: Buffer, out: memoryview | bytearray) -> None:
        """Like open, into `out` (exactly len(ciphertext) - 16 bytes).

        On failure `out` may hold unverified bytes: callers reuse a private buffer and never
        release it after a failure.
        """
        _check_nonce(nonce)
        if len(ciphertext) < TAG_SIZE:
            raise CorruptObject("a ciphertext is shorter than its authentication tag")
        try:
            self._gcm.decrypt_into(nonce, ciphertext, aad, out)
        except InvalidTag:
            raise CorruptObject(_AUTH_FAILED) from None


_AUTH_FAILED = "stored data failed authentication (tampered, truncated, reordered, or moved from another object)"


def _check_nonce(nonce: Buffer) -> None:
    if len(nonce) != NONCE_SIZE:
        raise ValueError("AES-256-GCM here takes a 96-bit nonce")


def stream_nonce(prefix: bytes, index: int, final: bool) -> bytes:
    """The STREAM nonce of chunk `index`: prefix | index (u32) | final flag."""
    if len(prefix) != STREAM_PREFIX_SIZE:
        raise ValueError("a STREAM nonce prefix is 7 bytes")
    if not 0 <= index < MAX_CHUNKS:
        raise ValueError("an object has at most 2**32 chunks")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


# ---------------------------------------------------------------------------------- chunking
Source = BinaryIO | Iterable[Buffer] | Buffer


class _Filler:
    """Fills a buffer completely from a file object or an iterable of byte strings."""

    def __init__(self, source: Source) -> None:
        self._readinto = None
        self._iter: Iterator[Buffer] | None = None
        self._pending = memoryview(b"")
        if isinstance(source, bytes | bytearray | memoryview):
            self._iter = iter((source,))
        elif hasattr(source, "readinto"):
            self._readinto = source.readinto
        elif hasattr(source, "read"):
            read = source.read
            self._iter = iter(lambda: read(1 << 20), b"")
        else:
            self._iter = iter(source)

    def fill(self, buf: bytearray) -> int:
        view = memoryview(buf)
        filled = 0
        size = len(buf)
        while filled < size:
            if self._readinto is not None:
                n = self._readinto(view[filled:])
                if not n:
                    break
                filled += n
                continue
            if not self._pending:
                assert self._iter is not None
                piece = next(self._iter, None)
                if piece is None:
                    break
                if not isinstance(piece, bytes | bytearray | memoryview):
                    raise TypeError("an object source yields bytes")
                self._pending = memoryview(piece).cast("B")
                continue
            take = min(len(self._pending), size - filled)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
        return filled


def iter_chunks(source: Source, chunk_size: int) -> Iterator[tuple[memoryview, bool]]:
    """Yield (chunk, is_final) with one chunk of lookahead, so the last chunk is flagged.

    Chunks are views into two reused buffers: use each before asking for the next. An empty
    source yields one empty final chunk (an empty object still has an authenticated end).
    """
    filler = _Filler(source)
    current, ahead = bytearray(chunk_size), bytearray(chunk_size)
    n = filler.fill(current)
    while True:
        m = filler.fill(ahead) if n == chunk_size else 0
        yield memoryview(current)[:n], m == 0
        if m == 0:
            return
        current, ahead, n = ahead, current, m
