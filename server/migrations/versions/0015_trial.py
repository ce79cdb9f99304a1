"""trial: an incident's arm in a trial of EVR (treatment or control), in the
indicators' covering index with the category

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


KPIS = ['reported_at', 'state', 'grade', 'arrived_at', 'submitted_at', 'reviewed_at', 'review_overdue', 'crime_outcome',
        'dispatched_to']


def upgrade() -> None:
    op.add_column('incidents', sa.Column('arm', sa.String(length=16), nullable=True))
    # The indicators' covering index covers the arm (and the category filter) too.
    op.drop_index('ix_incidents_kpis', table_name='incidents')
    op.create_index('ix_incidents_kpis', 'incidents', [*KPIS, 'arm', 'category'])


def downgrade() -> None:
    op.drop_index('ix_incidents_kpis', table_name='incidents')
    op.create_index('ix_incidents_kpis', 'incidents', KPIS)
    with op.batch_alter_table('incidents') as batch:
        batch.drop_column('arm')
