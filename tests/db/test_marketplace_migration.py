"""Migration 0013 on a database with rows: a catalog-wide model's free-text publisher becomes a
reference to a publisher record (one per name; a workspace's own models keep theirs without
one), and the per-request usage records become usage events, counts unchanged (SQLite and
PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from modelport.db import migrate
from modelport.db.engine import Database


def test_publishers_become_records_and_usage_records_become_events(db_url: str) -> None:
    db = Database(db_url)
    try:
        cfg = migrate.alembic_config(db.engine)
        command.upgrade(cfg, "0012")  # the revision before the marketplace
        with db.engine.begin() as c:
            c.execute(sa.text("INSERT INTO workspaces (id, name, description, state, created_at) "
                              "VALUES ('ws_1', 'team', '', 'active', CURRENT_TIMESTAMP)"))
            for mid, scope, owner, pub in (("mdl_a", "", None, "Acme"), ("mdl_b", "", None, "Acme"),
                                           ("mdl_c", "", None, "Other"), ("mdl_d", "ws_1", "ws_1", "team")):
                c.execute(sa.text(
                    "INSERT INTO models (id, name, version, scope_key, owner_workspace_id, publisher, license_spdx, "
                    "task, format, card, model_metadata, size_bytes, scan_status, scan_report, scanned_at, curated, "
                    "downloadable, finetunable, deployment_types, source, deprecated, created_at, updated_at) "
                    "VALUES (:id, :id, '1', :scope, :owner, :pub, 'MIT', 'chat-completion', 'gguf', '', '{}', 0, "
                    "'passed', '{}', CURRENT_TIMESTAMP, false, false, false, '[]', 'imported', false, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"id": mid, "scope": scope, "owner": owner, "pub": pub})
            for i in range(3):
                c.execute(sa.text(
                    "INSERT INTO usage_records (at, workspace_id, deployment_id, model_id, api, prompt_tokens, "
                    "completion_tokens, outcome) VALUES (CURRENT_TIMESTAMP, 'ws_1', 'dep_1', 'mdl_a', "
                    "'chat.completions', :p, :c, 'success')"), {"p": 10 + i, "c": 20 + i})
        command.upgrade(cfg, "0013")
        with db.engine.connect() as c:
            pubs = dict(c.execute(sa.text("SELECT name, id FROM publishers")).all())
            assert set(pubs) == {"Acme", "Other"}
            refs = dict(c.execute(sa.text("SELECT id, publisher_id FROM models")).all())
            assert refs == {"mdl_a": pubs["Acme"], "mdl_b": pubs["Acme"], "mdl_c": pubs["Other"], "mdl_d": None}
            events = c.execute(sa.text("SELECT input_tokens, output_tokens, status, offer_id FROM usage_events "
                                       "ORDER BY id")).all()
            assert [tuple(e) for e in events] == [(10, 20, "success", None), (11, 21, "success", None),
                                                  (12, 22, "success", None)]
        command.downgrade(cfg, "0012")
        with db.engine.connect() as c:
            assert c.execute(sa.text("SELECT sum(prompt_tokens), sum(completion_tokens) FROM usage_records")
                             ).one() == (33, 63)
    finally:
        db.dispose()
