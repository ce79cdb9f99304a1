"""evidence uploads

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 13:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

import evr.db

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('uploads',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('consultation_id', sa.String(length=36), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('uploaded_by', sa.String(length=64), nullable=False),
    sa.Column('uploader_role', sa.String(length=16), nullable=False),
    sa.Column('client', sa.String(length=64), nullable=True),
    sa.Column('original_name', sa.Text(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('declared_type', sa.String(length=255), nullable=True),
    sa.Column('content_type', sa.String(length=255), nullable=True),
    sa.Column('length', sa.BigInteger(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('staged_bytes', sa.BigInteger(), nullable=False),
    sa.Column('staged_records', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('exhibit_ref', sa.String(length=64), nullable=True),
    sa.Column('created_at', evr.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', evr.db.UTCDateTime(), nullable=False),
    sa.Column('completed_at', evr.db.UTCDateTime(), nullable=True),
    sa.Column('has_preview', sa.Boolean(), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('quarantine_reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_uploads_consultation_id'), ['consultation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_uploads_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_uploads_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uploads_status'))
        batch_op.drop_index(batch_op.f('ix_uploads_created_at'))
        batch_op.drop_index(batch_op.f('ix_uploads_consultation_id'))

    op.drop_table('uploads')
