"""Streaming sha256 of model files: recorded at import, checked before every load and download.

Files are read in 1 MiB chunks into one reused buffer, so hashing a multi-GB model costs a
constant amount of memory. `verify_sha256` is the one check loaders call before they trust
bytes on disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from modelport.errors import IntegrityError

CHUNK_SIZE = 1024 * 1024


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Return the hex sha256 of the file at `path`.

    `progress`, when given, is called after each chunk with the number of bytes hashed so far
    (cumulative), so an importer can show a progress bar for large weights.
    """
    digest = hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
            done += n
            if progress is not None:
                progress(done)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, *, name: str | None = None) -> None:
    """Raise IntegrityError unless the file's sha256 equals the recorded `expected` value.

    The message names the file (its relative name when given) but neither hash in full, since a
    mismatch means the stored bytes changed after import and must not be loaded.
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        label = name if name is not None else Path(path).name
        raise IntegrityError(
            f"{label}: the file's sha256 does not match the value recorded at import; "
            "the stored bytes changed and will not be loaded. Re-import the model.",
            details={"file": label},
        )
