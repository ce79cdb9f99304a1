"""audit checkpoints and retention (schedule, reviews, holds, disposal certificates)

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-22 09:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

import evr.db

revision = '0005'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_audit_log_actor', 'audit_log', ['actor'], unique=False)
    op.create_table('audit_checkpoints',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('at', evr.db.UTCDateTime(), nullable=False),
    sa.Column('last_id', sa.Integer(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.Column('key_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_checkpoints_last_id', 'audit_checkpoints', ['last_id'], unique=False)

    op.create_table('retention_assignments',
    sa.Column('consultation_id', sa.String(length=36), nullable=False),
    sa.Column('retention_class', sa.String(length=32), nullable=False),
    sa.Column('subject_dob', sa.Date(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('set_by', sa.String(length=64), nullable=False),
    sa.Column('set_at', evr.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id'], ),
    sa.PrimaryKeyConstraint('consultation_id')
    )

    op.create_table('retention_items',
    sa.Column('item_id', sa.String(length=36), nullable=False),
    sa.Column('consultation_id', sa.String(length=36), nullable=False),
    sa.Column('rule', sa.String(length=32), nullable=False),
    sa.Column('due_at', evr.db.UTCDateTime(), nullable=True),
    sa.Column('action', sa.String(length=8), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('held', sa.Boolean(), nullable=False),
    sa.Column('review_decision', sa.String(length=8), nullable=True),
    sa.Column('reviewed_at', evr.db.UTCDateTime(), nullable=True),
    sa.Column('next_review_at', evr.db.UTCDateTime(), nullable=True),
    sa.Column('disposal', sa.JSON(), nullable=True),
    sa.Column('updated_at', evr.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['evidence_items.id'], ),
    sa.PrimaryKeyConstraint('item_id')
    )
    op.create_index('ix_retention_items_live_due', 'retention_items', ['due_at', 'item_id'], unique=False,
                    sqlite_where=sa.text("state != 'disposed'"), postgresql_where=sa.text("state != 'disposed'"))
    op.create_index('ix_retention_items_consultation_id', 'retention_items', ['consultation_id'], unique=False)
    op.create_index('ix_retention_items_rule_state', 'retention_items', ['rule', 'state'], unique=False)

    op.create_table('retention_reviews',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.String(length=36), nullable=False),
    sa.Column('at', evr.db.UTCDateTime(), nullable=False),
    sa.Column('reviewer', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('criteria', sa.JSON(), nullable=False),
    sa.Column('rule', sa.String(length=32), nullable=False),
    sa.Column('next_review_at', evr.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['item_id'], ['evidence_items.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_retention_reviews_item_id', 'retention_reviews', ['item_id'], unique=False)

    op.create_table('retention_holds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=36), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('placed_by', sa.String(length=64), nullable=False),
    sa.Column('placed_at', evr.db.UTCDateTime(), nullable=False),
    sa.Column('released_at', evr.db.UTCDateTime(), nullable=True),
    sa.Column('released_by', sa.String(length=64), nullable=True),
    sa.Column('release_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_retention_holds_target', 'retention_holds', ['target'], unique=False)
    op.create_index('ix_retention_holds_released_at', 'retention_holds', ['released_at'], unique=False)

    op.create_table('disposal_certificates',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('item_id', sa.String(length=36), nullable=False),
    sa.Column('consultation_id', sa.String(length=36), nullable=False),
    sa.Column('disposed_at', evr.db.UTCDateTime(), nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('key_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['evidence_items.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id')
    )
    op.create_index('ix_disposal_certificates_consultation_id', 'disposal_certificates', ['consultation_id'],
                    unique=False)
    op.create_index('ix_disposal_certificates_disposed_at', 'disposal_certificates', ['disposed_at'], unique=False)

    op.create_table('retention_meta',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )


def downgrade() -> None:
    op.drop_table('retention_meta')
    op.drop_index('ix_disposal_certificates_disposed_at', table_name='disposal_certificates')
    op.drop_index('ix_disposal_certificates_consultation_id', table_name='disposal_certificates')
    op.drop_table('disposal_certificates')
    op.drop_index('ix_retention_holds_released_at', table_name='retention_holds')
    op.drop_index('ix_retention_holds_target', table_name='retention_holds')
    op.drop_table('retention_holds')
    op.drop_index('ix_retention_reviews_item_id', table_name='retention_reviews')
    op.drop_table('retention_reviews')
    op.drop_index('ix_retention_items_rule_state', table_name='retention_items')
    op.drop_index('ix_retention_items_consultation_id', table_name='retention_items')
    op.drop_index('ix_retention_items_live_due', table_name='retention_items')
    op.drop_table('retention_items')
    op.drop_table('retention_assignments')
    op.drop_index('ix_audit_checkpoints_last_id', table_name='audit_checkpoints')
    op.drop_table('audit_checkpoints')
    op.drop_index('ix_audit_log_actor', table_name='audit_log')
