"""incidents: the EVR queue (incidents and their timeline), API keys, and the
consultation's incident

Revision ID: 0011
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

import evr.db

revision = '0011'
down_revision = '0001'
branch_labels = None
depends_on = None

OPEN = "state NOT IN ('rejected', 'finalised', 'patrol_suspect', 'patrol_enquiries')"


def upgrade() -> None:
    op.create_table(
        'incidents',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('cad_ref', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=24), nullable=False),
        sa.Column('grade', sa.Integer(), nullable=False),
        sa.Column('category', sa.String(length=64), nullable=False),
        sa.Column('reported_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('summary', sa.Text(), nullable=False),
        sa.Column('victim', sa.JSON(), nullable=False),
        sa.Column('eligibility', sa.JSON(), nullable=False),
        sa.Column('vulnerability', sa.Boolean(), nullable=False),
        sa.Column('high_harm', sa.Boolean(), nullable=False),
        sa.Column('created_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('created_by', sa.String(length=64), nullable=False),
        sa.Column('created_by_role', sa.String(length=16), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=False),
        sa.Column('allocated_to', sa.Integer(), nullable=True),
        sa.Column('allocated_name', sa.String(length=64), nullable=True),
        sa.Column('dispatched_to', sa.Integer(), nullable=True),
        sa.Column('dispatched_name', sa.String(length=64), nullable=True),
        sa.Column('dispatched_at', evr.db.UTCDateTime(), nullable=True),
        sa.Column('consultation_id', sa.String(length=36), nullable=True),
        sa.Column('arrived_at', evr.db.UTCDateTime(), nullable=True),
        sa.Column('phoned_at', evr.db.UTCDateTime(), nullable=True),
        sa.Column('submitted_at', evr.db.UTCDateTime(), nullable=True),
        sa.Column('investigation', sa.JSON(), nullable=True),
        sa.Column('reviewed_at', evr.db.UTCDateTime(), nullable=True),
        sa.Column('review_overdue', sa.Boolean(), nullable=True),
        sa.Column('review', sa.JSON(), nullable=True),
        sa.Column('crime_outcome', sa.Integer(), nullable=True),
        sa.Column('crime_outcome_at', evr.db.UTCDateTime(), nullable=True),
        sa.Column('updated_at', evr.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['allocated_to'], ['users.id']),
        sa.ForeignKeyConstraint(['dispatched_to'], ['users.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_incidents_cad_ref', 'incidents', ['cad_ref'])
    op.create_index('ix_incidents_created_by_id', 'incidents', ['created_by_id'])
    op.create_index('ix_incidents_allocated_to', 'incidents', ['allocated_to'])
    op.create_index('ix_incidents_dispatched_to', 'incidents', ['dispatched_to'])
    op.create_index('ix_incidents_state_reported', 'incidents', ['state', 'reported_at'])
    op.create_index('uq_incidents_open_cad_ref', 'incidents', ['cad_ref'], unique=True,
                    sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))
    op.create_table(
        'incident_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('incident_id', sa.String(length=36), nullable=False),
        sa.Column('at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('kind', sa.String(length=24), nullable=False),
        sa.Column('from_state', sa.String(length=24), nullable=True),
        sa.Column('to_state', sa.String(length=24), nullable=True),
        sa.Column('actor', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('details', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['incident_id'], ['incidents.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_incident_events_incident_id', 'incident_events', ['incident_id'])
    op.create_table(
        'api_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', evr.db.UTCDateTime(), nullable=False),
        sa.Column('revoked_at', evr.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
        sa.UniqueConstraint('key_hash'),
    )
    op.add_column('consultations', sa.Column('incident_id', sa.String(length=36), nullable=True))
    op.create_index('ix_consultations_incident_id', 'consultations', ['incident_id'])


def downgrade() -> None:
    op.drop_index('ix_consultations_incident_id', table_name='consultations')
    with op.batch_alter_table('consultations') as batch:
        batch.drop_column('incident_id')
    op.drop_table('api_keys')
    op.drop_index('ix_incident_events_incident_id', table_name='incident_events')
    op.drop_table('incident_events')
    op.drop_table('incidents')
