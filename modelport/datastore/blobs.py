"""Blob storage behind a small interface: a local directory by default, S3 later.

A blob store only ever sees ciphertext: the datastore encrypts before the first `write`. A
writer is a context manager: the blob becomes visible under its key only when the block exits
cleanly (LocalBlobStore: temp file in the same directory, fsync, rename, fsync directory); on
an exception the temp file is removed and nothing is visible. An S3 store maps the same shape
onto a multipart upload (complete on exit, abort on error).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from modelport.datastore.errors import StorageUnavailable
from modelport.kms.files import FileSystem, is_temp_name

_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}(/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}){0,3}$")
_SUFFIX = ".blob"


class BlobWriter(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...


class BlobStore(Protocol):
    """Where ciphertext blobs live. Keys are slash-separated ids (`ws/obj/v3-1a2b`)."""

    def writer(self, key: str) -> contextlib.AbstractContextManager[BlobWriter]:
        """Write a blob atomically: visible on a clean exit, absent after an exception."""
        ...

    def open(self, key: str) -> tuple[BinaryIO, int]:
        """Open a blob for reading; return (file object, size). FileNotFoundError if absent."""
        ...

    def delete(self, key: str) -> bool:
        """Remove a blob; False if it was not there."""
        ...

    def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str = "") -> Iterator[str]: ...


class _FileWriter:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise StorageUnavailable("writing the blob failed; nothing was stored, retry later") from exc


def _storage_step(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except OSError as exc:
        raise StorageUnavailable("writing the blob failed; nothing was stored, retry later") from exc


class LocalBlobStore:
    """Blobs as files under `root`, one directory level per key segment."""

    def __init__(self, root: Path, *, fs: FileSystem | None = None) -> None:
        self.root = Path(root)
        self._fs = fs or FileSystem()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError("invalid blob key")
        *dirs, name = key.split("/")
        return self.root.joinpath(*dirs, name + _SUFFIX)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BlobWriter]:
        final = self.path(key)
        try:
            fd, tmp = self._fs.create_temp(final.parent, final.name)
        except OSError as exc:
            raise StorageUnavailable("the blob directory refused a new file; nothing was written") from exc
        try:
            try:
                # Errors raised by the caller's block (a failing upload source, say) pass through
                # unchanged; only our own I/O errors become StorageUnavailable.
                yield _FileWriter(fd)
                _storage_step(os.fsync, fd)
            finally:
                os.close(fd)
            _storage_step(self._fs.replace, tmp, final)
        except BaseException:
            self._fs.discard_temp(tmp)
            raise
        try:
            self._fs.fsync_dir(final.parent)
        except OSError as exc:
            raise StorageUnavailable("the blob was written but its directory could not be synced") from exc

    def open(self, key: str) -> tuple[BinaryIO, int]:
        fh = open(self.path(key), "rb", buffering=0)
        try:
            size = os.fstat(fh.fileno()).st_size
        except BaseException:
            fh.close()
            raise
        return fh, size

    def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            removed = self._fs.remove(path)
        except OSError as exc:
            raise StorageUnavailable("removing a blob failed; retry the deletion") from exc
        # Drop the object's directory once its last blob is gone; it fails harmlessly otherwise.
        with contextlib.suppress(OSError):
            path.parent.rmdir()
        return removed

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self, prefix: str = "") -> Iterator[str]:
        base = self.root.joinpath(*prefix.split("/")) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root)
            for name in files:
                if name.endswith(_SUFFIX) and not is_temp_name(name):
                    yield "/".join((*rel.parts, name[: -len(_SUFFIX)]))

    def stale_temp_files(self) -> Iterator[Path]:
        """Temp files left by a crash (a clean failure removes its own); the datastore's gc sweeps them."""
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if is_temp_name(name):
                    yield Path(dirpath) / name
