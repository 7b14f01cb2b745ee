"""Double-layer object format: every chunk sealed under two independent data keys.

An object is a header followed by frames. Each plaintext chunk passes AES-256-GCM twice:

    frame_i = Outer.seal(nonce_o(i, final), Inner.seal(nonce_i(i, final), chunk_i, aad_inner), aad_outer)

The inner data key is wrapped by the workspace key, the outer one by the platform key
(modelport.datastore.store does the wrapping and keeps the wrapped keys in the key ledger, not in
this blob). Either key alone yields nothing: the outer key turns a frame into inner ciphertext,
the inner key cannot start before the outer layer is removed.

Blob layout:

    "MPDS" | format u8 | header length u16 | header | frame_0 | frame_1 | ...
    header = chunk size u32 | object version u64 | inner nonce prefix (7) | outer nonce prefix (7)
             | len u8 | workspace id | len u8 | object id

Every frame but the last holds exactly `chunk size` plaintext bytes, so frame i starts at a
known offset; a frame is its chunk plus 32 bytes (two tags). The whole header (magic to object
id) is the associated data of both layers, with a label per layer, so a flipped header bit, or a
blob moved under another workspace, object id or version, fails authentication. The reader
checks the header's identity against the one it expects before it decrypts anything.

The key versions are bound where they change: in each wrapped data key (the local keystore
authenticates key ref and version, KMS its backing key), together with the same workspace,
object id, version and layer as wrap context. They are deliberately not in the blob's associated
data: rewrap moves data keys to a new key version without touching (or decrypting) the blob.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from modelport.datastore.aead import (
    KEY_SIZE,
    MAX_CHUNKS,
    STREAM_PREFIX_SIZE,
    TAG_SIZE,
    Aead,
    Buffer,
    Source,
    iter_chunks,
    stream_nonce,
)
from modelport.datastore.errors import CorruptObject

MAGIC = b"MPDS"
FORMAT_VERSION = 1
FRAME_OVERHEAD = 2 * TAG_SIZE
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 << 20
MAX_ID_LENGTH = 128
_PREAMBLE = struct.Struct(">4sBH")
_FIXED = struct.Struct(f">IQ{STREAM_PREFIX_SIZE}s{STREAM_PREFIX_SIZE}s")
_AAD_INNER = b"modelport/datastore/v1/inner\x00"
_AAD_OUTER = b"modelport/datastore/v1/outer\x00"

Sink = Callable[[memoryview], object]


class DataKeys(NamedTuple):
    """The two data keys of one object version. Never logged: repr hides them."""

    inner: bytes
    outer: bytes

    def __repr__(self) -> str:
        return "DataKeys(<hidden>)"

    @classmethod
    def generate(cls) -> DataKeys:
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))


@dataclass(frozen=True)
class ObjectHeader:
    workspace_id: str
    object_id: str
    version: int
    chunk_size: int
    inner_prefix: bytes
    outer_prefix: bytes

    @classmethod
    def new(cls, workspace_id: str, object_id: str, version: int, chunk_size: int) -> ObjectHeader:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError("chunk size out of range")
        return cls(
            workspace_id,
            object_id,
            version,
            chunk_size,
            os.urandom(STREAM_PREFIX_SIZE),
            os.urandom(STREAM_PREFIX_SIZE),
        )

    def encode(self) -> bytes:
        ws, obj = self.workspace_id.encode(), self.object_id.encode()
        if len(ws) > MAX_ID_LENGTH or len(obj) > MAX_ID_LENGTH:
            raise ValueError("identifier too long for the object header")
        body = (
            _FIXED.pack(self.chunk_size, self.version, self.inner_prefix, self.outer_prefix)
            + bytes([len(ws)])
            + ws
            + bytes([len(obj)])
            + obj
        )
        return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body)) + body

    @classmethod
    def decode(cls, raw: bytes) -> ObjectHeader:
        """Parse a header; CorruptObject if it is malformed. Authenticity is checked by the frames."""
        try:
            magic, fmt, length = _PREAMBLE.unpack_from(raw)
            if magic != MAGIC or fmt != FORMAT_VERSION or len(raw) != _PREAMBLE.size + length:
                raise CorruptObject("the blob is not a datastore object of a known format")
            chunk_size, version, inner_prefix, outer_prefix = _FIXED.unpack_from(raw, _PREAMBLE.size)
            pos = _PREAMBLE.size + _FIXED.size
            ws_len = raw[pos]
            ws = raw[pos + 1 : pos + 1 + ws_len].decode()
            pos += 1 + ws_len
            obj_len = raw[pos]
            obj = raw[pos + 1 : pos + 1 + obj_len].decode()
            pos += 1 + obj_len
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise CorruptObject("the object header is malformed") from exc
        if pos != len(raw) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise CorruptObject("the object header is malformed")
        return cls(ws, obj, version, chunk_size, inner_prefix, outer_prefix)


@dataclass(frozen=True)
class EncryptResult:
    size: int
    sha256: str
    ciphertext_size: int


def _aads(raw_header: bytes) -> tuple[bytes, bytes]:
    return _AAD_INNER + raw_header, _AAD_OUTER + raw_header


def ciphertext_size(plaintext_size: int, header_size: int, chunk_size: int) -> int:
    chunks = max(1, -(-plaintext_size // chunk_size))
    return header_size + plaintext_size + chunks * FRAME_OVERHEAD


def encrypt_object(
    source: Source, sink: Sink, header: ObjectHeader, keys: DataKeys, *, digest: bool = True
) -> EncryptResult:
    """Seal `source` chunk by chunk under both layers and feed the frames to `sink`.

    `sink` receives views into a reused buffer and must consume them before returning (write
    them to a file, copy them). Only ciphertext ever reaches it. Memory: three chunk buffers.
    """
    raw = header.encode()
    aad_inner, aad_outer = _aads(raw)
    inner, outer = Aead(keys.inner), Aead(keys.outer)
    cs = header.chunk_size
    middle, frame = bytearray(cs + TAG_SIZE), bytearray(cs + FRAME_OVERHEAD)
    middle_view, frame_view = memoryview(middle), memoryview(frame)
    hasher = hashlib.sha256() if digest else None
    sink(memoryview(raw))
    total = len(raw)
    size = 0
    for index, (chunk, final) in enumerate(iter_chunks(source, cs)):
        if index >= MAX_CHUNKS:
            raise ValueError("object too large for its chunk size")
        n = len(chunk)
        if hasher is not None:
            hasher.update(chunk)
        mid = middle_view[: n + TAG_SIZE]
        out = frame_view[: n + FRAME_OVERHEAD]
        inner.seal_into(stream_nonce(header.inner_prefix, index, final), chunk, aad_inner, mid)
        outer.seal_into(stream_nonce(header.outer_prefix, index, final), mid, aad_outer, out)
        sink(out)
        size += n
        total += len(out)
    return EncryptResult(size, hasher.hexdigest() if hasher else "", total)


def read_header(blob: BinaryIO) -> tuple[ObjectHeader, bytes]:
    """Read and parse the header at the start of `blob`; return it and its raw bytes."""
    pre = _read_exact(blob, _PREAMBLE.size)
    magic, fmt, length = _PREAMBLE.unpack(pre) if len(pre) == _PREAMBLE.size else (b"", 0, 0)
    if magic != MAGIC or fmt != FORMAT_VERSION:
        raise CorruptObject("the blob is not a datastore object of a known format")
    raw = pre + _read_exact(blob, length)
    return ObjectHeader.decode(raw), raw


def decrypt_object(
    blob: BinaryIO, blob_size: int, keys: DataKeys, *, workspace_id: str, object_id: str, version: int
) -> Iterator[bytes]:
    """Verify and decrypt a blob, yielding plaintext chunks in order.

    The header and its identity are checked before the first chunk; each chunk is released only
    after both layers authenticated it. A failure raises CorruptObject: nothing from the failing
    chunk or after it is ever yielded. Memory: two chunk buffers plus the chunk handed out.
    """
    header, raw = read_header(blob)
    if (header.workspace_id, header.object_id, header.version) != (workspace_id, object_id, version):
        raise CorruptObject("the blob belongs to another object, workspace or version")
    return _frames(blob, blob_size, header, raw, keys)


def _frames(blob: BinaryIO, blob_size: int, header: ObjectHeader, raw: bytes, keys: DataKeys) -> Iterator[bytes]:
    aad_inner, aad_outer = _aads(raw)
    inner, outer = Aead(keys.inner), Aead(keys.outer)
    frame_size = header.chunk_size + FRAME_OVERHEAD
    payload = blob_size - len(raw)
    # Frame count from the stored size: a cut or an extension changes which frame is read as the
    # final one, and the final flag in the nonce makes that frame fail.
    count = max(1, -(-payload // frame_size))
    last = payload - (count - 1) * frame_size
    if payload < FRAME_OVERHEAD or last < FRAME_OVERHEAD or count > MAX_CHUNKS:
        raise CorruptObject(_TRUNCATED)
    frame, middle = bytearray(frame_size), bytearray(frame_size - TAG_SIZE)
    frame_view, middle_view = memoryview(frame), memoryview(middle)
    for index in range(count):
        final = index == count - 1
        length = last if final else frame_size
        ct = frame_view[:length]
        if _readinto_exact(blob, ct) != length:
            raise CorruptObject(_TRUNCATED)
        mid = middle_view[: length - TAG_SIZE]
        outer.open_into(stream_nonce(header.outer_prefix, index, final), ct, aad_outer, mid)
        yield inner.open(stream_nonce(header.inner_prefix, index, final), mid, aad_inner)


_TRUNCATED = "the stored object is truncated or extended"


def _read_exact(blob: BinaryIO, n: int) -> bytes:
    data = bytearray(n)
    got = _readinto_exact(blob, memoryview(data))
    return bytes(data[:got])


def _readinto_exact(blob: BinaryIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = blob.readinto(view[got:])  # type: ignore[attr-defined]  # every blob source is a raw or buffered file
        if not n:
            break
        got += n
    return got


def peel_outer(blob: BinaryIO, blob_size: int, outer_key: Buffer) -> Iterator[bytes]:
    """Remove only the outer layer, yielding inner-layer ciphertext (never plaintext).

    For audits and tests of the two-layer promise (P11): what the platform key alone opens.
    """
    header, raw = read_header(blob)
    _, aad_outer = _aads(raw)
    outer = Aead(outer_key)
    frame_size = header.chunk_size + FRAME_OVERHEAD
    payload = blob_size - len(raw)
    count = max(1, -(-payload // frame_size))
    for index in range(count):
        final = index == count - 1
        length = payload - index * frame_size if final else frame_size
        ct = _read_exact(blob, length)
        yield outer.open(stream_nonce(header.outer_prefix, index, final), ct, aad_outer)
