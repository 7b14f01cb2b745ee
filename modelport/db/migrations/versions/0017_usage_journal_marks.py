"""usage_journal_marks: how far each usage journal (metering/journal.py) is in usage_events,
written in the transaction that moves its events, so that a journal replayed after a crash adds
only what was not moved yet

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 14:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'usage_journal_marks',
        sa.Column('journal', sa.String(length=64), nullable=False),
        sa.Column('position', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('journal'),
    )


def downgrade() -> None:
    op.drop_table('usage_journal_marks')
