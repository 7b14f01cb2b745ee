"""drop the index ix_usage_events_ws_at: no query reads usage events by workspace and time
(usage is read from the hourly meters; events by deployment use ix_usage_events_dep_at), and
every metered request paid for keeping it up to date in its usage event's INSERT

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 07:40:00
"""

from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_events_ws_at')


def downgrade() -> None:
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.create_index('ix_usage_events_ws_at', ['workspace_id', 'at'], unique=False)
