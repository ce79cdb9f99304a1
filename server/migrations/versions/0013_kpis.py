"""kpis: incidents by when they were reported, with every column the performance
indicators read (a covering index: a year is read from the index alone)

Revision ID: 0013
Revises: 0012
"""
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_incidents_kpis', 'incidents', ['reported_at', 'state', 'grade', 'arrived_at', 'submitted_at',
                                                       'reviewed_at', 'review_overdue', 'crime_outcome',
                                                       'dispatched_to'])


def downgrade() -> None:
    op.drop_index('ix_incidents_kpis', table_name='incidents')
