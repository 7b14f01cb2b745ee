"""Reading a stored model file for a download, verified against its recorded sha256 (P13).

The bytes on disk are checked while they are read, not trusted: the file must have exactly the
recorded size, and every chunk but the last is handed out as it is read while the sha256 of the
whole file is computed; the last chunk is handed out only once that sha256 equals the recorded
one. Otherwise IntegrityError is raised instead of the last chunk, so a client can never receive
a complete file whose hash is wrong. A file of one chunk (and any size mismatch) is refused
before its first byte. The verified bytes are the ones sent: nothing is read twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelport.errors import IntegrityError

log = logging.getLogger("modelport.catalog")

CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class DownloadFile:
    path: Path
    name: str
    size: int
    sha256: str
    model_id: str = ""


class VerifiedRead:
    """A started read: `first` is the first chunk (already checked as far as it can be), then
    iterate for the rest; raises IntegrityError instead of the last chunk on a mismatch."""

    def __init__(self, f: DownloadFile, chunk_size: int = CHUNK_SIZE) -> None:
        self.file = f
        self._chunks = _verified_chunks(f, chunk_size)
        self.first = next(self._chunks)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._chunks.close()


def _mismatch(f: DownloadFile, what: str) -> IntegrityError:
    log.error("stored model file no longer matches the %s recorded at import; download refused", what,
              extra={"event": "catalog.integrity", "model_id": f.model_id})
    return IntegrityError(f"The stored file '{f.name}' no longer matches the {what} recorded at import; it is not "
                          "served. An operator must re-import the model.", details={"file": f.name})


def _verified_chunks(f: DownloadFile, chunk_size: int) -> Generator[bytes, None, None]:
    with open(f.path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size != f.size:
            raise _mismatch(f, "size")
        digest = hashlib.sha256()
        total = 0
        held = fh.read(chunk_size)
        while True:
            digest.update(held)
            total += len(held)
            following = fh.read(chunk_size)
            if not following:
                break
            yield held
            held = following
        if total != f.size:
            raise _mismatch(f, "size")
        if digest.hexdigest() != f.sha256.lower():
            raise _mismatch(f, "sha256")
        yield held
