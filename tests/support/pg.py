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
