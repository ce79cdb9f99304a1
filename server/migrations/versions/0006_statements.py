"""statements (MG11): statements, their versions, events and signing records

Revision ID: 0006
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

import evr.db

revision = '0006'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'statements',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('consultation_id', sa.String(length=36), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('created_by', sa.String(length=64), nullable=False),
        sa.Column('created_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('updated_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('sent_by', sa.String(length=64), nullable=True),
        sa.Column('sent_at', evr.db.UTCDateTime(), nullable=True),
        sa.Column('identification', sa.Text(), nullable=True),
        sa.Column('sha256', sa.String(length=64), nullable=True),
        sa.Column('signed_at', evr.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('statements', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_statements_consultation_id'), ['consultation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_statements_status'), ['status'], unique=False)

    op.create_table(
        'statement_versions',
        sa.Column('statement_id', sa.String(length=36), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('content', sa.JSON(), nullable=False),
        sa.Column('content_sha256', sa.String(length=64), nullable=False),
        sa.Column('saved_by', sa.String(length=64), nullable=False),
        sa.Column('saved_at', evr.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['statement_id'], ['statements.id'], ),
        sa.PrimaryKeyConstraint('statement_id', 'version'),
    )

    op.create_table(
        'statement_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('statement_id', sa.String(length=36), nullable=False),
        sa.Column('at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('kind', sa.String(length=24), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('actor', sa.String(length=64), nullable=False),
        sa.Column('text', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['statement_id'], ['statements.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('statement_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_statement_events_statement_id'), ['statement_id'], unique=False)

    op.create_table(
        'statement_signatures',
        sa.Column('statement_id', sa.String(length=36), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('document_sha256', sa.String(length=64), nullable=False),
        sa.Column('shown_sha256', sa.String(length=64), nullable=False),
        sa.Column('signature_sha256', sa.String(length=64), nullable=False),
        sa.Column('signed_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('typed_name', sa.String(length=200), nullable=False),
        sa.Column('pages', sa.Integer(), nullable=False),
        sa.Column('declaration', sa.Text(), nullable=False),
        sa.Column('binding_hash', sa.String(length=64), nullable=False),
        sa.Column('client_ip', sa.String(length=64), nullable=True),
        sa.Column('user_agent', sa.String(length=512), nullable=True),
        sa.Column('officer', sa.String(length=64), nullable=False),
        sa.Column('identification', sa.Text(), nullable=False),
        sa.Column('read_by', sa.String(length=200), nullable=True),
        sa.Column('record', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['statement_id'], ['statements.id'], ),
        sa.PrimaryKeyConstraint('statement_id'),
        sa.UniqueConstraint('document_sha256'),
    )


def downgrade() -> None:
    op.drop_table('statement_signatures')
    with op.batch_alter_table('statement_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_statement_events_statement_id'))
    op.drop_table('statement_events')
    op.drop_table('statement_versions')
    with op.batch_alter_table('statements', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_statements_status'))
        batch_op.drop_index(batch_op.f('ix_statements_consultation_id'))
    op.drop_table('statements')
