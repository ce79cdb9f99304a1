"""webhooks: the outbox of events for the command-and-control system, and when an
incident's call closed (the review is due within 24 h of it)

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

import evr.db

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('incidents', sa.Column('call_closed_at', evr.db.UTCDateTime(), nullable=True))
    # An incident's newest call is its consultation_id: when that closed, its review became due.
    op.execute("UPDATE incidents SET call_closed_at = (SELECT consultations.closed_at FROM consultations "
               "WHERE consultations.id = incidents.consultation_id) WHERE consultation_id IS NOT NULL")
    op.create_table(
        'webhook_outbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('incident_id', sa.String(length=36), nullable=False),
        sa.Column('event', sa.String(length=32), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('delivered_at', evr.db.UTCDateTime(), nullable=True),
        sa.Column('last_error', sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(['incident_id'], ['incidents.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhook_outbox_incident_id', 'webhook_outbox', ['incident_id'])
    op.create_index('ix_webhook_outbox_pending', 'webhook_outbox', ['delivered_at', 'next_attempt_at'])


def downgrade() -> None:
    op.drop_index('ix_webhook_outbox_pending', table_name='webhook_outbox')
    op.drop_index('ix_webhook_outbox_incident_id', table_name='webhook_outbox')
    op.drop_table('webhook_outbox')
    with op.batch_alter_table('incidents') as batch:
        batch.drop_column('call_closed_at')
