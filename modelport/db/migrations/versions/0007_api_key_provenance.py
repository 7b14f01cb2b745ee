"""api key provenance: who made each key, and whether it carries platform-admin power

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:00:00.000000

A key carries platform-admin power only when its own user, a platform admin acting with such a
key, made it. Keys made before this revision are classified from the audit log: the
`apikey.create` record of each key names its maker; a key without one is the bootstrap key,
made by the installation for the first admin. A key of a platform admin made by anyone else
(the escalation this revision closes) keeps working for that user's workspace role, without
platform-admin power.
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

api_keys = sa.table('api_keys', sa.column('id', sa.String), sa.column('user_id', sa.String),
                    sa.column('created_by', sa.String), sa.column('platform_admin', sa.Boolean))
audit_events = sa.table('audit_events', sa.column('id', sa.Integer), sa.column('action', sa.String),
                        sa.column('outcome', sa.String), sa.column('resource_id', sa.String),
                        sa.column('actor_user_id', sa.String))
users = sa.table('users', sa.column('id', sa.String), sa.column('is_platform_admin', sa.Boolean))


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('created_by', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('platform_admin', sa.Boolean(), nullable=False, server_default=sa.false()))

    maker = (sa.select(audit_events.c.actor_user_id)
             .where(audit_events.c.action == 'apikey.create', audit_events.c.outcome == 'success',
                    audit_events.c.resource_id == api_keys.c.id)
             .order_by(audit_events.c.id).limit(1).scalar_subquery())
    op.execute(api_keys.update().values(created_by=maker))
    op.execute(api_keys.update().where(api_keys.c.created_by.is_(None)).values(created_by=api_keys.c.user_id))
    admins = sa.select(users.c.id).where(users.c.is_platform_admin.is_(True))
    op.execute(api_keys.update()
               .where(api_keys.c.created_by == api_keys.c.user_id, api_keys.c.user_id.in_(admins))
               .values(platform_admin=True))


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('platform_admin')
        batch_op.drop_column('created_by')
