"""Engine and session factory for the metadata store (SQLite by default, PostgreSQL at scale)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    # Freed pages are overwritten with zeros: deleted rows do not linger in the file.
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. Its result is a CursorResult, which counts them;
    Session.execute is typed as returning any Result."""
    return cast(CursorResult[Any], result).rowcount


def make_engine(url: str, light: bool = False) -> Engine:
    """`light` (PostgreSQL): for single-statement reads, one round trip each: a pooled connection
    is used without first checking that it is alive (the pre-ping is a round trip of its own), in
    autocommit (no BEGIN and ROLLBACK around the read); the caller must handle a dead connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if light:
        return create_engine(url, pool_pre_ping=False, isolation_level="AUTOCOMMIT", pool_size=2, max_overflow=8,
                             pool_timeout=5)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """Owns the engine and hands out sessions; one per running server or test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # For one-row reads on a hot path (the policy version): on PostgreSQL a small pool of its
        # own, without the pre-ping and in autocommit (`make_engine(light=True)`: one round trip a
        # read instead of four); on SQLite the engine (no pre-ping, no round trips). A read on it
        # that fails because its pooled connection had died may be tried once more
        # (`connection_invalidated` on the error).
        self.light = self.engine if self.engine.dialect.name == "sqlite" else make_engine(url, light=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back on any exception."""
        with self.sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    def dispose(self) -> None:
        if self.light is not self.engine:
            self.light.dispose()
        self.engine.dispose()
