"""marketplace: usage events and hourly meters (replacing usage_records), publishers and their
users and keys, offers with versioned terms, subscriptions, budgets; a catalog model's publisher
becomes a reference (existing catalog-wide models get a publisher record of their name)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 12:00:00
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('usage_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('deployment_id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('offer_id', sa.String(length=40), nullable=True),
    sa.Column('subscription_id', sa.String(length=40), nullable=True),
    sa.Column('api', sa.String(length=32), nullable=False),
    sa.Column('input_tokens', sa.Integer(), nullable=False),
    sa.Column('output_tokens', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('input_price', sa.String(length=40), nullable=True),
    sa.Column('output_price', sa.String(length=40), nullable=True),
    sa.Column('aggregated', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_events'))
    )
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.create_index('ix_usage_events_dep_at', ['deployment_id', 'at'], unique=False)
        batch_op.create_index('ix_usage_events_ws_at', ['workspace_id', 'at'], unique=False)
        batch_op.create_index(batch_op.f('ix_usage_events_aggregated'), ['aggregated'], unique=False)

    op.create_table('usage_meters',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('deployment_id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('offer_id', sa.String(length=40), nullable=False),
    sa.Column('subscription_id', sa.String(length=40), nullable=False),
    sa.Column('meter', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('unit_price', sa.String(length=40), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_meters')),
    sa.UniqueConstraint('hour', 'workspace_id', 'deployment_id', 'model_id', 'offer_id', 'subscription_id', 'meter',
                        'currency', 'unit_price', name='uq_usage_meters_key'),
    )
    with op.batch_alter_table('usage_meters', schema=None) as batch_op:
        batch_op.create_index('ix_usage_meters_ws_hour', ['workspace_id', 'hour'], unique=False)
        batch_op.create_index('ix_usage_meters_offer_hour', ['offer_id', 'hour'], unique=False)

    op.create_table('publishers',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_publishers')),
    sa.UniqueConstraint('name', name=op.f('uq_publishers_name'))
    )
    op.create_table('publisher_members',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('publisher_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['publisher_id'], ['publishers.id'], name=op.f('fk_publisher_members_publisher_id_publishers'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_publisher_members_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_publisher_members')),
    sa.UniqueConstraint('publisher_id', 'user_id', name=op.f('uq_publisher_members_publisher_id_user_id'))
    )
    with op.batch_alter_table('publisher_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_publisher_members_publisher_id'), ['publisher_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_publisher_members_user_id'), ['user_id'], unique=False)
    op.create_table('publisher_api_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('publisher_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=40), nullable=False),
    sa.Column('created_by', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['publisher_id'], ['publishers.id'],
                            name=op.f('fk_publisher_api_keys_publisher_id_publishers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_publisher_api_keys_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_publisher_api_keys'))
    )
    with op.batch_alter_table('publisher_api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_publisher_api_keys_publisher_id'), ['publisher_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_publisher_api_keys_user_id'), ['user_id'], unique=False)

    # A catalog model's publisher becomes a reference: one record per publisher name of the
    # catalog-wide models; a workspace's own models keep their free text and no record.
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('publisher_id', sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f('ix_models_publisher_id'), ['publisher_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_models_publisher_id_publishers'), 'publishers',
                                    ['publisher_id'], ['id'], ondelete='RESTRICT')
        batch_op.drop_column('offer')
    conn = op.get_bind()
    names = [r[0] for r in conn.execute(sa.text(
        "SELECT DISTINCT publisher FROM models WHERE owner_workspace_id IS NULL ORDER BY publisher"))]
    for name in names:
        pub_id = f"pub_{secrets.token_hex(8)}"
        conn.execute(sa.text("INSERT INTO publishers (id, name, display_name, created_at) "
                             "VALUES (:id, :name, :name, CURRENT_TIMESTAMP)"), {"id": pub_id, "name": name})
        conn.execute(sa.text("UPDATE models SET publisher_id = :id WHERE publisher = :name "
                             "AND owner_workspace_id IS NULL"), {"id": pub_id, "name": name})

    op.create_table('offers',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('publisher_id', sa.String(length=40), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('input_price', sa.String(length=40), nullable=False),
    sa.Column('output_price', sa.String(length=40), nullable=False),
    sa.Column('contact_sharing_required', sa.Boolean(), nullable=False),
    sa.Column('deployment_types', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_by', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_offers_model_id_models'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['publisher_id'], ['publishers.id'], name=op.f('fk_offers_publisher_id_publishers'),
                            ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_offers'))
    )
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_offers_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_offers_publisher_id'), ['publisher_id'], unique=False)
    op.create_table('offer_terms',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('offer_id', sa.String(length=40), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['offer_id'], ['offers.id'], name=op.f('fk_offer_terms_offer_id_offers'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_offer_terms')),
    sa.UniqueConstraint('offer_id', 'version', name=op.f('uq_offer_terms_offer_id_version'))
    )
    with op.batch_alter_table('offer_terms', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_offer_terms_offer_id'), ['offer_id'], unique=False)
    op.create_table('subscriptions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('offer_id', sa.String(length=40), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('terms_version', sa.String(length=32), nullable=False),
    sa.Column('terms_sha256', sa.String(length=64), nullable=False),
    sa.Column('contact_name', sa.String(length=200), nullable=False),
    sa.Column('contact_email', sa.String(length=254), nullable=False),
    sa.Column('contact_organization', sa.String(length=200), nullable=False),
    sa.Column('consent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('consent_user_id', sa.String(length=40), nullable=True),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('accepted_by', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['offer_id'], ['offers.id'], name=op.f('fk_subscriptions_offer_id_offers'),
                            ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_subscriptions_workspace_id_workspaces'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscriptions')),
    sa.UniqueConstraint('workspace_id', 'offer_id', name=op.f('uq_subscriptions_workspace_id_offer_id'))
    )
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subscriptions_offer_id'), ['offer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_subscriptions_workspace_id'), ['workspace_id'], unique=False)
    op.create_table('budgets',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('amount', sa.String(length=40), nullable=False),
    sa.Column('alerted_month', sa.String(length=7), nullable=False),
    sa.Column('alerted', sa.JSON(), nullable=False),
    sa.Column('updated_by', sa.String(length=40), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_budgets_workspace_id_workspaces'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_budgets')),
    sa.UniqueConstraint('workspace_id', 'currency', name=op.f('uq_budgets_workspace_id_currency'))
    )
    with op.batch_alter_table('budgets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_budgets_workspace_id'), ['workspace_id'], unique=False)

    # Earlier per-request counts become usage events (no offer: nothing was sold before), to be
    # aggregated into the meters by the server's first pass.
    op.execute(
        "INSERT INTO usage_events (at, workspace_id, deployment_id, model_id, api, input_tokens, output_tokens, "
        "status, aggregated) SELECT at, workspace_id, deployment_id, model_id, api, prompt_tokens, "
        "completion_tokens, outcome, false FROM usage_records ORDER BY id"
    )
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_usage_records_workspace_id'))
        batch_op.drop_index('ix_usage_dep_at')
    op.drop_table('usage_records')


def downgrade() -> None:
    with op.batch_alter_table('budgets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_budgets_workspace_id'))
    op.drop_table('budgets')
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subscriptions_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_subscriptions_offer_id'))
    op.drop_table('subscriptions')
    with op.batch_alter_table('offer_terms', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_offer_terms_offer_id'))
    op.drop_table('offer_terms')
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_offers_publisher_id'))
        batch_op.drop_index(batch_op.f('ix_offers_model_id'))
    op.drop_table('offers')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offer', sa.JSON(), nullable=True))
        batch_op.drop_constraint(batch_op.f('fk_models_publisher_id_publishers'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_models_publisher_id'))
        batch_op.drop_column('publisher_id')
    with op.batch_alter_table('publisher_api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_publisher_api_keys_user_id'))
        batch_op.drop_index(batch_op.f('ix_publisher_api_keys_publisher_id'))
    op.drop_table('publisher_api_keys')
    with op.batch_alter_table('publisher_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_publisher_members_user_id'))
        batch_op.drop_index(batch_op.f('ix_publisher_members_publisher_id'))
    op.drop_table('publisher_members')
    op.drop_table('publishers')
    op.create_table('usage_records',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('deployment_id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('api', sa.String(length=32), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_records'))
    )
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.create_index('ix_usage_dep_at', ['deployment_id', 'at'], unique=False)
        batch_op.create_index(batch_op.f('ix_usage_records_workspace_id'), ['workspace_id'], unique=False)
    op.execute(
        "INSERT INTO usage_records (at, workspace_id, deployment_id, model_id, api, prompt_tokens, "
        "completion_tokens, outcome) SELECT at, workspace_id, deployment_id, model_id, api, input_tokens, "
        "output_tokens, status FROM usage_events ORDER BY id"
    )
    with op.batch_alter_table('usage_meters', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_meters_offer_hour')
        batch_op.drop_index('ix_usage_meters_ws_hour')
    op.drop_table('usage_meters')
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_usage_events_aggregated'))
        batch_op.drop_index('ix_usage_events_ws_at')
        batch_op.drop_index('ix_usage_events_dep_at')
    op.drop_table('usage_events')
