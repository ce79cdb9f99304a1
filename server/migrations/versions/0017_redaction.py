"""redaction: redacted copies of recordings (kind, source, operations) and the queue
of redaction jobs that make them

Revision ID: 0017
Revises: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
# It alters recordings (0002, on the evidence branch).
depends_on = '0002'


def upgrade() -> None:
    with op.batch_alter_table('recordings') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='original'))
        batch.add_column(sa.Column('source_recording_id', sa.String(length=36), nullable=True))
        batch.add_column(sa.Column('source_manifest_sha256', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('redaction', sa.JSON(), nullable=True))
        batch.create_index('ix_recordings_source_recording_id', ['source_recording_id'])
    op.create_table(
        'redaction_jobs',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('consultation_id', sa.String(length=36), sa.ForeignKey('consultations.id'), nullable=False),
        sa.Column('recording_id', sa.String(length=36), sa.ForeignKey('recordings.id'), nullable=False),
        sa.Column('operations', sa.JSON(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('requested_by', sa.Integer(), sa.ForeignKey('users.id'), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('progress', sa.Float(), nullable=False, server_default='0'),
        sa.Column('eta_s', sa.Float(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('result_recording_id', sa.String(length=36), nullable=True),
        sa.Column('worker', sa.String(length=100), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(), nullable=True),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
    )
    op.create_index('ix_redaction_jobs_recording_id', 'redaction_jobs', ['recording_id'])
    op.create_index('ix_redaction_jobs_status_created', 'redaction_jobs', ['status', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_redaction_jobs_status_created', 'redaction_jobs')
    op.drop_index('ix_redaction_jobs_recording_id', 'redaction_jobs')
    op.drop_table('redaction_jobs')
    with op.batch_alter_table('recordings') as batch:
        batch.drop_index('ix_recordings_source_recording_id')
        batch.drop_column('redaction')
        batch.drop_column('source_manifest_sha256')
        batch.drop_column('source_recording_id')
        batch.drop_column('kind')
