"""usage_events: the index on `aggregated` becomes a partial index of the events not yet in the
meters. The metering writer stores events aggregated (it adds them into the meters as it writes
them), so every INSERT paid for keeping an entry of an index that no query needed; the partial
index holds only what an aggregation pass has left to do (usually nothing)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 14:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_events_aggregated')
    op.create_index('ix_usage_events_unaggregated', 'usage_events', ['id'], unique=False,
                    sqlite_where=sa.text('aggregated = 0'), postgresql_where=sa.text('aggregated = false'))


def downgrade() -> None:
    op.drop_index('ix_usage_events_unaggregated', table_name='usage_events')
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.create_index('ix_usage_events_aggregated', ['aggregated'], unique=False)
