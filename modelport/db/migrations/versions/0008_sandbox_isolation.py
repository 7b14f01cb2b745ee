"""sandbox isolation shown on deployments and fine-tuning jobs

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # {"network": bool, "files": bool, "processes": bool}; null until a process ran.
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('isolation', sa.JSON(), nullable=True))
    with op.batch_alter_table('finetune_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('isolation', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('finetune_jobs', schema=None) as batch_op:
        batch_op.drop_column('isolation')
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_column('isolation')
