"""workspace state: a deletion that has not finished is recorded as `deleting`

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state', sa.String(length=16), server_default='active', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.drop_column('state')
