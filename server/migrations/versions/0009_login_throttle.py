"""login throttle: failed logins per client address, across user names

Revision ID: 0009
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

import evr.db

revision = '0009'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'login_throttle',
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('window_start', evr.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('address'),
    )


def downgrade() -> None:
    op.drop_table('login_throttle')
