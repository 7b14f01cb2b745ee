"""policy version counters kept by triggers on every change to the policies table

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-02 15:30:00

A server learns that another server changed the policies by reading one counter, which the
database itself advances in the same transaction as every insert, update and delete of a policy
(a save, a delete, the cascade of a deleted workspace, a hand-made SQL change): nothing can
change the policies without moving it, and it never depends on a server's clock. The row "*"
counts every change; each scope's row (workspace id, "" for the platform) is set to the new
count when one of its policies changes, so a server reloads only the scopes that moved.
"""

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0013'
branch_labels = None
depends_on = None

_PG_FUNCTION = """
CREATE FUNCTION modelport_policy_version_bump() RETURNS trigger AS $$
DECLARE
    v bigint;
BEGIN
    -- The row lock taken here is held to commit: changes get their numbers in commit order.
    UPDATE policy_versions SET version = version + 1 WHERE scope_key = '*' RETURNING version INTO v;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO policy_versions (scope_key, version) VALUES (OLD.scope_key, v)
            ON CONFLICT (scope_key) DO UPDATE SET version = EXCLUDED.version;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO policy_versions (scope_key, version) VALUES (NEW.scope_key, v)
            ON CONFLICT (scope_key) DO UPDATE SET version = EXCLUDED.version;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
_PG_TRIGGER = """
CREATE TRIGGER policies_version_bump AFTER INSERT OR UPDATE OR DELETE ON policies
    FOR EACH ROW EXECUTE FUNCTION modelport_policy_version_bump()
"""

# SQLite serializes writers, so the numbers follow commit order there too. (An upsert from a
# SELECT needs the SELECT's WHERE clause: without one SQLite reads ON CONFLICT as a join's.)
_SQLITE_BUMP = "UPDATE policy_versions SET version = version + 1 WHERE scope_key = '*';"
_SQLITE_SET = ("INSERT INTO policy_versions (scope_key, version) "
               "SELECT {row}.scope_key, version FROM policy_versions WHERE scope_key = '*' "
               "ON CONFLICT (scope_key) DO UPDATE SET version = excluded.version;")
_SQLITE_TRIGGERS = {
    "policies_version_insert": ("AFTER INSERT", [_SQLITE_SET.format(row="NEW")]),
    "policies_version_update": ("AFTER UPDATE", [_SQLITE_SET.format(row="OLD"), _SQLITE_SET.format(row="NEW")]),
    "policies_version_delete": ("AFTER DELETE", [_SQLITE_SET.format(row="OLD")]),
}


def upgrade() -> None:
    op.create_table(
        'policy_versions',
        sa.Column('scope_key', sa.String(length=40), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('scope_key', name=op.f('pk_policy_versions')),
    )
    op.execute("INSERT INTO policy_versions (scope_key, version) VALUES ('*', 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for name, (when, sets) in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} ON policies BEGIN {_SQLITE_BUMP} {' '.join(sets)} END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS policies_version_bump ON policies")
        op.execute("DROP FUNCTION IF EXISTS modelport_policy_version_bump()")
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table('policy_versions')
