"""PostgreSQL for the store tests: a server named by MODELPORT_TEST_DATABASE_URL, or a
throwaway cluster in a temp directory when the server binaries are installed, or None (the
tests that need it are then skipped with a reason that says so).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / binary).exists():
            return str(root / binary)
    return None


@contextmanager
def throwaway_cluster() -> Iterator[str | None]:
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if not initdb or not pg_ctl:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="modelport-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            yield None
            return
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = tmp / "data"
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-w", "-l", str(tmp / "log"), "-o",
                    f"-p {port} -k {tmp} -h 127.0.0.1 -c fsync=off", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def server_url() -> Iterator[tuple[str | None, str]]:
    """(admin URL or None, how it was found)."""
    url = os.environ.get("MODELPORT_TEST_DATABASE_URL")
    if url:
        yield url, "MODELPORT_TEST_DATABASE_URL"
        return
    with throwaway_cluster() as tmp_url:
        yield tmp_url, "throwaway cluster" if tmp_url else "no server and no PostgreSQL binaries"


def create_database(admin_url: str) -> str:
    """A fresh, uniquely named database on the server; returns its URL."""
    name = "modelport_test_" + secrets.token_hex(6)
    engine = sa.create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return str(sa.engine.make_url(_psycopg(admin_url)).set(database=name).render_as_string(hide_password=False))


def drop_database(admin_url: str, url: str) -> None:
    name = sa.engine.make_url(url).database
    engine = sa.create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    for _ in range(20):
        try:
            with engine.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            break
        except sa.exc.OperationalError:
            time.sleep(0.2)
    engine.dispose()


def _psycopg(url: str) -> str:
    u = sa.engine.make_url(url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


class TableLock:
    """A slow database, made deterministic: another session holds an ACCESS EXCLUSIVE lock on
    `table`, so that every query of it waits until the lock goes (on `release`, or after
    `max_hold` seconds at the latest, so that a server whose event loop waits on it is never
    left hanging). `released` is set once the lock is gone."""

    def __init__(self, url: str, table: str, max_hold: float = 60.0) -> None:
        self.url, self.table, self.max_hold = url, table, max_hold
        self._release = threading.Event()
        self.released = threading.Event()
        self._held = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        engine = sa.create_engine(_psycopg(self.url))
        try:
            with engine.connect() as c:
                c.execute(sa.text(f'LOCK TABLE "{self.table}" IN ACCESS EXCLUSIVE MODE'))
                self._held.set()
                self._release.wait(self.max_hold)
                c.rollback()
        finally:
            self.released.set()
            self._held.set()
            engine.dispose()

    def __enter__(self) -> TableLock:
        self._thread.start()
        self._held.wait(30)
        if self.released.is_set():
            raise RuntimeError(f"could not lock {self.table}")
        return self

    def release(self) -> None:
        self._release.set()
        self._thread.join(30)

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_waiters(url: str) -> int:
    """Sessions of the database at `url` that wait for a lock now."""
    engine = sa.create_engine(_psycopg(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            return int(c.scalar(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")) or 0)
    finally:
        engine.dispose()
