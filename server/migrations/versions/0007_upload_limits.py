"""uploads: uploader by user id, and why a preview was skipped

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-30 16:30:00.000000

``uploader_id`` identifies a member of staff who uploaded by account (the victim has
none: NULL with ``uploader_role`` ``victim``); existing staff uploads are matched to
their account by the user name they were recorded under. ``preview_skipped`` says why
an image or video was kept without a preview.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('uploader_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('preview_skipped', sa.Text(), nullable=True))
        batch_op.create_foreign_key('fk_uploads_uploader_id_users', 'users', ['uploader_id'], ['id'])
    op.execute(
        "UPDATE uploads SET uploader_id = (SELECT users.id FROM users WHERE users.username = uploads.uploaded_by) "
        "WHERE uploader_role <> 'victim'"
    )


def downgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_constraint('fk_uploads_uploader_id_users', type_='foreignkey')
        batch_op.drop_column('preview_skipped')
        batch_op.drop_column('uploader_id')
