"""Migration 0007: existing staff uploads are matched to their account by the user name
they were recorded under; the victim's stay without one (finding 15 of issue 11)."""

from __future__ import annotations

from datetime import datetime, timezone

from alembic import command
from sqlalchemy import insert, select

from evr.db import Consultation, Upload, User, alembic_config, make_engine


async def test_0007_gives_staff_uploads_their_user_id(db_url):
    engine = make_engine(db_url)
    now = datetime.now(timezone.utc)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0004"))
            await conn.execute(insert(User.__table__).values(
                [dict(id=7, username="alice", role="officer", password_hash="x", created_at=now, disabled=False),
                 dict(id=8, username="victim", role="officer", password_hash="x", created_at=now, disabled=False)]))
            await conn.execute(insert(Consultation.__table__).values(
                id="c1", cad_ref="CAD-1", status="closed", created_by=7, created_at=now, victim={}, eligibility={},
                token_hash="0" * 64, expires_at=now))
            row = dict(consultation_id="c1", status="complete", original_name="a", filename="a", length=1, offset=1,
                       staged_bytes=0, staged_records=0, created_at=now, updated_at=now, has_preview=False, meta={})
            await conn.execute(insert(Upload.__table__).values([
                {**row, "id": "u1", "uploaded_by": "alice", "uploader_role": "officer"},
                {**row, "id": "u2", "uploaded_by": "victim", "uploader_role": "victim"},
                {**row, "id": "u3", "uploaded_by": "gone", "uploader_role": "sergeant"}]))
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "heads"))
            found = dict((await conn.execute(select(Upload.id, Upload.uploader_id).order_by(Upload.id))).all())
    finally:
        await engine.dispose()
    # The victim's upload is not given the account that happens to be called "victim".
    assert found == {"u1": 7, "u2": None, "u3": None}
