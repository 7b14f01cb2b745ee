"""Atomic file writes and inter-process locks for the keystore, key ledger and blob directory.

Every file that holds key state is replaced whole: write a temp file in the same directory, fsync
it, `rename` it over the old name, fsync the directory. A reader sees the old bytes or the new
bytes, never a mix, and a failure at any step leaves the old file in place and no temp file
behind. The destructive half of crypto-shredding relies on the same step: rewriting the file
without an entry unlinks the only file that held it.

All OS calls that change the disk go through one `FileSystem` object, so a test can inject a
storage failure at the OS edge (a subclass whose `replace` raises) without patching globals.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

TEMP_MARKER = ".tmp-"


class FileSystem:
    """The OS edge for durable writes. Subclass and override a method to inject failures."""

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def create_temp(self, directory: Path, stem: str) -> tuple[int, Path]:
        """Create an exclusive 0600 temp file next to its final name; return (fd, path)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        attempts = 3
        while True:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f".{stem}{TEMP_MARKER}{secrets.token_hex(8)}"
            try:
                return os.open(path, flags, 0o600), path
            except FileNotFoundError:
                # An empty directory can be removed by a concurrent delete between mkdir and
                # open; make it again.
                attempts -= 1
                if not attempts:
                    raise

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Replace `path` with `data` atomically and durably; on failure nothing changes."""
        fd, tmp = self.create_temp(path.parent, path.name)
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:
                view = memoryview(data)
                while view:
                    written = fh.write(view)
                    view = view[written:]
                os.fsync(fh.fileno())
            self.replace(tmp, path)
        except BaseException:
            self.discard_temp(tmp)
            raise
        self.fsync_dir(path.parent)

    def remove(self, path: Path) -> bool:
        """Unlink `path` durably; return False when it was already gone."""
        try:
            self.unlink(path)
        except FileNotFoundError:
            return False
        self.fsync_dir(path.parent)
        return True

    def discard_temp(self, tmp: Path) -> None:
        # Best effort: the caller is already raising the error that matters.
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def sweep_temp_files(directory: Path, fs: FileSystem, prefix: str = ".") -> int:
    """Remove the temp files in `directory` (not below it) whose names start with `prefix`; the
    count removed. Call it only while holding the lock that every writer of those files holds:
    then a temp file is a crashed writer's leftover, never a write in progress. A leftover of a
    key file still holds that key's sealed material after the key is destroyed."""
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix) and is_temp_name(name) and fs.remove(directory / name):
            removed += 1
    return removed


class InterProcessLock:
    """A re-entrant lock held by one thread of one process at a time.

    A `threading.RLock` orders the threads of this process; an exclusive `flock` on a lock file
    orders processes (the gateway and a CLI command may share one data directory). The flock is
    taken only by the outermost acquisition, because a second flock from the same process on a
    new file description would block on itself.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fd, self._fd = self._fd, None
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
