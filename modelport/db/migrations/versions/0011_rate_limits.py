"""per-deployment rate limits: the owner's limits and the platform admin's caps

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Both {"requests_per_minute": int | null, "tokens_per_minute": int | null}; null (or a null
    # field): the platform default of the deployment's type (MODELPORT_*_REQUESTS/TOKENS_PER_MINUTE).
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rate_limits', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('rate_limit_caps', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_column('rate_limit_caps')
        batch_op.drop_column('rate_limits')
