"""surveys: victims' survey links, and their answers kept apart from who gave them

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

import evr.db

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'survey_invitations',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('consultation_id', sa.String(length=36), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('expires_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('used', sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'),
    )
    op.create_index('ix_survey_invitations_consultation_id', 'survey_invitations', ['consultation_id'])
    op.create_table(
        'survey_answers',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('answered_on', sa.Date(), nullable=False),
        sa.Column('satisfied', sa.Integer(), nullable=True),
        sa.Column('would_use_again', sa.Boolean(), nullable=True),
        sa.Column('felt_safe', sa.Integer(), nullable=True),
        sa.Column('confidence_in_police', sa.Integer(), nullable=True),
        sa.Column('grade', sa.Integer(), nullable=True),
        sa.Column('category', sa.String(length=64), nullable=True),
        sa.Column('arm', sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    # Covering what the figures read: a year of answers is read from the index alone.
    op.create_index('ix_survey_answers_figures', 'survey_answers',
                    ['answered_on', 'satisfied', 'would_use_again', 'grade', 'category'])


def downgrade() -> None:
    op.drop_index('ix_survey_answers_figures', table_name='survey_answers')
    op.drop_table('survey_answers')
    op.drop_index('ix_survey_invitations_consultation_id', table_name='survey_invitations')
    op.drop_table('survey_invitations')
