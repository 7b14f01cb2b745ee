"""Migrations from an empty database on SQLite and PostgreSQL, the SQLite pragmas, and readiness."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient

from modelport.api.app import create_app
from modelport.bootstrap import prepare
from modelport.config import build_settings
from modelport.db import migrate
from modelport.db.base import Base
from modelport.db.engine import Database


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_from_empty_builds_exactly_the_declared_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert _tables(db.engine) == set()
        assert migrate.current_revision(db.engine) is None
        assert not migrate.is_current(db.engine)
        migrate.upgrade(db.engine)
        assert migrate.is_current(db.engine)
        assert migrate.current_revision(db.engine) == migrate.head_revision(db.engine)
        assert _tables(db.engine) == set(Base.metadata.tables) | {"alembic_version"}
        # What the migrations built is what the tables declare: autogenerate finds nothing to do.
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
        migrate.upgrade(db.engine)  # a second start changes nothing
        assert migrate.is_current(db.engine)
    finally:
        db.dispose()


def test_every_revision_upgrades_and_downgrades_in_turn(db_url: str) -> None:
    db = Database(db_url)
    try:
        cfg = migrate.alembic_config(db.engine)
        revisions = [r.revision for r in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]
        assert revisions[-1] == migrate.head_revision(db.engine)
        for rev in revisions:
            command.upgrade(cfg, rev)
            assert migrate.current_revision(db.engine) == rev
        command.downgrade(cfg, "base")
        assert migrate.current_revision(db.engine) is None
        assert _tables(db.engine) <= {"alembic_version"}
        migrate.upgrade(db.engine)
        assert migrate.is_current(db.engine)
    finally:
        db.dispose()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with db.engine.connect() as conn:
            def pragma(name: str) -> object:
                return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

            assert pragma("journal_mode") == "wal"
            assert pragma("secure_delete") == 1
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 10000
    finally:
        db.dispose()


def test_sqlite_foreign_keys_are_enforced(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fk.db'}")
    try:
        migrate.upgrade(db.engine)
        with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO memberships (workspace_id, user_id, role, created_at) "
                                 "VALUES ('ws_none', 'usr_none', 'owner', CURRENT_TIMESTAMP)"))
    finally:
        db.dispose()


def test_sqlite_deleted_rows_do_not_linger_in_the_file(tmp_path: Path) -> None:
    """secure_delete: once a row is deleted and the WAL checkpointed, its bytes are gone."""
    path = tmp_path / "sd.db"
    marker = "deleted-marker-" + "q" * 64
    db = Database(f"sqlite:///{path}")
    try:
        migrate.upgrade(db.engine)
        with db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO workspaces (id, name, description, created_at) "
                                 "VALUES ('ws_x', 'x', :d, CURRENT_TIMESTAMP)"), {"d": marker})
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        assert marker.encode() in path.read_bytes()  # the scan below can see a row
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM workspaces WHERE id = 'ws_x'"))
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.dispose()
    for f in tmp_path.glob("sd.db*"):
        assert marker.encode() not in f.read_bytes(), f.name
    # Control: without the pragma the same steps leave the bytes behind, so the check above can fail.
    raw = sqlite3.connect(tmp_path / "control.db")
    raw.execute("PRAGMA secure_delete=OFF")
    raw.execute("CREATE TABLE t (v TEXT)")
    raw.execute("INSERT INTO t VALUES (?)", (marker,))
    raw.commit()
    raw.execute("DELETE FROM t")
    raw.commit()
    raw.close()
    assert marker.encode() in (tmp_path / "control.db").read_bytes()


def test_readyz_reports_pending_migrations_then_ready(db_url: str, tmp_path: Path) -> None:
    settings = build_settings({}, home=tmp_path / "home", database_url=db_url, load_bundled_models=False,
                              create_default_deployment=False)
    app = create_app(settings)
    svc = app.state.services
    try:
        client = TestClient(app)  # not entered: the lifespan (which migrates) does not run
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {"status": "not ready", "checks": {"database": "ok", "migrations": "pending"}}
        prepare(svc)
        r = client.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}
    finally:
        svc.db.dispose()


def test_readyz_reports_an_unreachable_database(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = build_settings({}, home=tmp_path / "home", load_bundled_models=False,
                              database_url=f"postgresql://nobody@127.0.0.1:{port}/none")
    app = create_app(settings)
    try:
        r = TestClient(app).get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not ready"
        assert body["checks"]["database"].startswith("unreachable (")
        assert "nobody" not in r.text  # the URL (it may hold a password) is not in the answer
    finally:
        app.state.services.db.dispose()
