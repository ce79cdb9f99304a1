"""Least privilege: admin manages users and reads the audit log and reaches nothing
of a consultation; records staff reach evidence only through retention, with a
reason; sergeants keep seeing every consultation."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from evr.db import Consultation, Recording
from evr.http import DB

TUS = {"Tus-Resumable": "1.0.0"}


async def staff_upload(officer: Any, cid: str, data: bytes = b"officer's note") -> str:
    """A finished staff upload (tus creation, then one PATCH); its id."""
    base = f"/api/consultations/{cid}/uploads"
    created = await officer.client.post(base, headers={**officer.headers(), **TUS, "Upload-Length": str(len(data)),
                                                       "Upload-Metadata": "filename bm90ZS50eHQ="})
    assert created.status == 201, await created.text()
    location = created.headers["Location"]
    sent = await officer.client.patch(location, data=data, headers={
        **officer.headers(), **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert sent.status == 204, await sent.text()
    return location.rstrip("/").rsplit("/", 1)[1]


async def a_recording(server: Any, cid: str) -> str:
    """A finished recording's row (the role checks come before its media is read)."""
    rid = str(uuid.uuid4())
    async with server.app[DB]() as db:
        consultation = await db.get(Consultation, cid)
        db.add(Recording(id=rid, consultation_id=cid, participant="victim", status="complete",
                         started_at=consultation.created_at, ended_at=consultation.created_at, duration_s=1.0,
                         segments=1, head_hash="0" * 64, manifest_sha256="0" * 64))
        await db.commit()
    return rid


@pytest.fixture
async def evidence(staff: Any, server: Any) -> dict[str, Any]:
    """A consultation with an upload, a statement and a recording, made by an officer."""
    alice = await staff("alice", "officer")
    created = await alice.create()
    cid = created["id"]
    upload = await staff_upload(alice, cid)
    statement = await alice.post(f"/api/consultations/{cid}/statements",
                                 {"witness": {"name": "Jane Smith", "over_18": True}, "text": "I saw it."})
    assert statement.status == 201, await statement.text()
    sid = (await statement.json())["id"]
    rid = await a_recording(server, cid)
    base = f"/api/consultations/{cid}"
    return {"officer": alice, "id": cid, "upload": upload, "statement": sid, "recording": rid, "base": base}


def evidence_routes(e: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Every route that reads or changes a consultation's evidence."""
    b, u, s, r = e["base"], e["upload"], e["statement"], e["recording"]
    return [
        ("GET", f"{b}/uploads", None),
        ("GET", f"{b}/uploads/{u}", None),
        ("GET", f"{b}/uploads/{u}/content", None),
        ("GET", f"{b}/uploads/{u}/preview", None),
        ("PATCH", f"{b}/uploads/{u}", {"exhibit_ref": "AB/1"}),
        ("GET", f"{b}/statements", None),
        ("GET", f"{b}/statements/{s}", None),
        ("GET", f"{b}/statements/{s}/versions/1", None),
        ("GET", f"{b}/statements/{s}/preview", None),
        ("GET", f"{b}/statements/{s}/pdf?reason=audit", None),
        ("GET", f"{b}/recordings", None),
        ("GET", f"{b}/recordings/{r}", None),
        ("GET", f"{b}/recordings/{r}/playback?reason=audit", None),
        ("GET", f"{b}/recordings/{r}/export?reason=audit", None),
        ("POST", f"{b}/recordings/{r}/classification", {"classification": "evidential", "reason": "x"}),
    ]


async def call(who: Any, method: str, path: str, body: Any) -> Any:
    return await who.client.request(method, path, json=body, headers=who.headers())


async def test_admin_reaches_no_consultation_and_no_evidence(evidence, staff, server):
    admin = await staff("ada", "admin")
    cid = evidence["id"]
    listed = await admin.get("/api/consultations")
    assert listed.status == 200 and (await listed.json())["consultations"] == []  # nor the victims' details
    assert (await admin.get(f"/api/consultations/{cid}")).status == 404
    assert (await admin.get(f"/api/consultations/{cid}/retention")).status == 404
    assert (await (await admin.get("/api/outbox")).json())["messages"] == []
    for method, path, body in evidence_routes(evidence):
        response = await call(admin, method, path, body)
        assert response.status == 403, (method, path, response.status)
        assert (await response.json())["error"]["code"] == "forbidden"
    closing = await admin.post(f"/api/consultations/{cid}/close")
    assert closing.status == 403  # a role that may never close, whatever the consultation
    async with server.app[DB]() as db:
        assert (await db.get(Consultation, cid)).status != "closed"
        assert (await db.scalar(select(Recording.classification).where(Recording.id == evidence["recording"]))
                == "non_evidential")
    # What admin is for: the audit log (users are managed with `evr user`).
    audit = await admin.get("/api/audit")
    assert audit.status == 200 and (await audit.json())["entries"]


async def test_records_staff_read_evidence_only_through_retention_with_a_reason(evidence, staff):
    rita = await staff("rita", "records")
    b, r = evidence["base"], evidence["recording"]
    for method, path, body in evidence_routes(evidence):
        if "/recordings" in path:
            continue
        response = await call(rita, method, path, body)
        assert response.status == 403, (method, path, response.status)
    # Recordings: their list (metadata) for retention work, content only with a reason.
    assert (await rita.get(f"{b}/recordings")).status == 200
    for path in (f"{b}/recordings/{r}/playback", f"{b}/recordings/{r}/export"):
        refused = await rita.get(path)
        assert refused.status == 422 and (await refused.json())["error"]["code"] == "reason_required"
    assert (await call(rita, "POST", f"{b}/recordings/{r}/classification",
                       {"classification": "evidential", "reason": "x"})).status == 403
    # Through retention: an item's content needs a reason too.
    items = await rita.get(f"/api/retention/consultations/{evidence['id']}/items")
    assert items.status == 200
    item = next(i for i in (await items.json())["items"] if i["kind"] == "upload")["item_id"]
    key = next(k for k in (await (await rita.get(f"/api/retention/items/{item}")).json())["objects"]
               if k.endswith("/original"))
    content = f"/api/retention/items/{item}/content?key={key}"
    assert (await rita.get(content)).status == 422
    opened = await rita.get(content + "&reason=Review of the retention class")
    assert opened.status == 200 and await opened.read() == b"officer's note"


async def test_sergeants_still_see_every_consultation_and_its_evidence(evidence, staff):
    sarge = await staff("sarge", "sergeant")
    b = evidence["base"]
    assert [c["id"] for c in (await (await sarge.get("/api/consultations")).json())["consultations"]] == [evidence["id"]]
    for path in (b, f"{b}/uploads", f"{b}/statements", f"{b}/recordings", f"{b}/retention"):
        assert (await sarge.get(path)).status == 200, path
