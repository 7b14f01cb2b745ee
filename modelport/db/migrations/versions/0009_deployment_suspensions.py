"""the reasons a deployment is suspended, as a set (key_disabled, subscription, policy)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # {reason: message}; empty when serving. A deployment suspended before this release was
    # suspended for its workspace key (the only cause there was).
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('suspensions', sa.JSON(), nullable=False, server_default='{}'))
    op.execute("UPDATE deployments SET suspensions = '{\"key_disabled\": \"The workspace key is disabled.\"}' "
               "WHERE state = 'suspended'")


def downgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_column('suspensions')
