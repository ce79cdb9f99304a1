"""guests, chat and location: guests' own links, the in-call chat (hash-chained),
the victim's last shared location, recordings of guests and of shared screens

Revision ID: 0016
Revises: 0015
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
# It alters recordings (0002, on the evidence branch).
depends_on = '0002'


def upgrade() -> None:
    op.create_table(
        'guests',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('consultation_id', sa.String(length=36), sa.ForeignKey('consultations.id'), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=True),
        sa.Column('language', sa.String(length=64), nullable=True),
        sa.Column('token_hash', sa.String(length=64), nullable=False, unique=True),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('binding_hash', sa.String(length=64), nullable=True),
        sa.Column('bound_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('created_by', sa.Integer(), sa.ForeignKey('users.id'), nullable=False),
        sa.Column('closed_at', sa.DateTime(), nullable=True),
        sa.Column('closed_by', sa.Integer(), sa.ForeignKey('users.id'), nullable=True),
    )
    op.create_index('ix_guests_consultation_id', 'guests', ['consultation_id'])
    op.create_table(
        'chat_messages',
        sa.Column('consultation_id', sa.String(length=36), sa.ForeignKey('consultations.id'), primary_key=True),
        sa.Column('seq', sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column('id', sa.String(length=36), nullable=False, unique=True),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.Column('sender_role', sa.String(length=32), nullable=False),
        sa.Column('sender_name', sa.String(length=200), nullable=True),
        sa.Column('sender_user_id', sa.Integer(), sa.ForeignKey('users.id'), nullable=True),
        sa.Column('guest_id', sa.String(length=36), nullable=True),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
    )
    op.add_column('consultations', sa.Column('location', sa.JSON(), nullable=True))
    with op.batch_alter_table('recordings') as batch:
        batch.alter_column('participant', type_=sa.String(length=32), existing_type=sa.String(length=16),
                           existing_nullable=False)
        batch.add_column(sa.Column('track', sa.String(length=16), nullable=False, server_default='camera'))
        batch.add_column(sa.Column('participant_name', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('recordings') as batch:
        batch.drop_column('participant_name')
        batch.drop_column('track')
        batch.alter_column('participant', type_=sa.String(length=16), existing_type=sa.String(length=32),
                           existing_nullable=False)
    with op.batch_alter_table('consultations') as batch:
        batch.drop_column('location')
    op.drop_table('chat_messages')
    op.drop_index('ix_guests_consultation_id', table_name='guests')
    op.drop_table('guests')
