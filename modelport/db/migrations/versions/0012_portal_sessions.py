"""portal sessions and one-time sign-in links

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'portal_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.String(length=40), nullable=False),
        sa.Column('workspace_id', sa.String(length=40), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=True),
        sa.Column('method', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_portal_sessions_user_id_users'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'],
                                name=op.f('fk_portal_sessions_workspace_id_workspaces'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], name=op.f('fk_portal_sessions_key_id_api_keys'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_portal_sessions')),
    )
    op.create_index(op.f('ix_portal_sessions_user_id'), 'portal_sessions', ['user_id'])
    op.create_index(op.f('ix_portal_sessions_workspace_id'), 'portal_sessions', ['workspace_id'])
    op.create_index(op.f('ix_portal_sessions_key_id'), 'portal_sessions', ['key_id'])
    op.create_table(
        'portal_signin_links',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=False),
        sa.Column('workspace_id', sa.String(length=40), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], name=op.f('fk_portal_signin_links_key_id_api_keys'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'],
                                name=op.f('fk_portal_signin_links_workspace_id_workspaces'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_portal_signin_links')),
    )
    op.create_index(op.f('ix_portal_signin_links_key_id'), 'portal_signin_links', ['key_id'])
    op.create_index(op.f('ix_portal_signin_links_workspace_id'), 'portal_signin_links', ['workspace_id'])


def downgrade() -> None:
    op.drop_table('portal_signin_links')
    op.drop_table('portal_sessions')
