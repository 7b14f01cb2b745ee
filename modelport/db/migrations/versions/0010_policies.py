"""governance policies (Cedar forbid policies, platform or workspace scope)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'policies',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('policy_id', sa.String(length=64), nullable=False),
        sa.Column('scope_key', sa.String(length=40), nullable=False),
        sa.Column('workspace_id', sa.String(length=40), nullable=True),
        sa.Column('cedar', sa.Text(), nullable=False),
        sa.Column('audit', sa.Boolean(), nullable=False),
        sa.Column('created_by', sa.String(length=40), nullable=True),
        sa.Column('updated_by', sa.String(length=40), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('scope_key', 'policy_id'),
    )
    op.create_index(op.f('ix_policies_scope_key'), 'policies', ['scope_key'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_policies_scope_key'), table_name='policies')
    op.drop_table('policies')
