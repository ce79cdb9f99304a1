"""link claim: outbox messages kept without the link token

Until now the outbox kept each link message as sent, token and all, and showed it
to every sergeant and admin. The service now keeps only the message with the link
redacted (``…/j/…``); this takes the token out of the messages already kept. The
tokens cannot come back: ``downgrade`` leaves the redacted messages as they are.

Revision ID: 0010
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from evr.logs import redact_links

revision = '0010'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    outbox = sa.table('outbox', sa.column('id', sa.Integer()), sa.column('body', sa.Text()))
    connection = op.get_bind()
    rows = connection.execute(sa.select(outbox.c.id, outbox.c.body).where(outbox.c.body.like('%/j/%'))).all()
    for message_id, body in rows:
        kept = redact_links(body)
        if kept != body:
            connection.execute(outbox.update().where(outbox.c.id == message_id).values(body=kept))


def downgrade() -> None:
    pass  # the tokens are gone for good, as they should be
