"""content safety

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 00:27:17.999183
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('blocklists',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('terms', sa.JSON(), nullable=False),
    sa.Column('patterns', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_blocklists_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocklists')),
    sa.UniqueConstraint('workspace_id', 'name', name=op.f('uq_blocklists_workspace_id_name'))
    )
    with op.batch_alter_table('blocklists', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blocklists_workspace_id'), ['workspace_id'], unique=False)

    op.create_table('content_filter_counts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment_id', sa.String(length=40), nullable=False),
    sa.Column('direction', sa.String(length=16), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_content_filter_counts_deployment_id_deployments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_content_filter_counts')),
    sa.UniqueConstraint('deployment_id', 'direction', 'category', 'action', name=op.f('uq_content_filter_counts_deployment_id_direction_category_action'))
    )
    with op.batch_alter_table('content_filter_counts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_content_filter_counts_deployment_id'), ['deployment_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('content_filter_counts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_content_filter_counts_deployment_id'))

    op.drop_table('content_filter_counts')
    with op.batch_alter_table('blocklists', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blocklists_workspace_id'))

    op.drop_table('blocklists')

