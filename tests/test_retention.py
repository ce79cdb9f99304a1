"""Retention: each class's rule, reviews, legal holds, disposal with certificates,
the scheduled sweep, the audit entry of every step and who may do what."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import sqlite3
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any, Optional

import pytest
from aiohttp.test_utils import TestServer
from conftest import eventually
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from s3server import make_s3_store, s3_client, s3_server  # noqa: F401 (fixtures)
from sqlalchemy import select, update

from evr.app import create_app
from evr.audit import Actor, AuditLog
from evr.config import Settings
from evr.db import (
    AuditEntry,
    DisposalCertificate,
    EvidenceItem,
    Recording,
    RetentionItem,
    make_engine,
    migrate,
    sessionmaker,
)
from evr.evidence import MasterKey
from evr.evidence.store import Disposed, FileStore, StillLocked
from evr.http import DB, RETENTION, SIGNING_KEY, STORE
from evr.retention.policy import Policy
from evr.retention.service import CSV_COLUMNS, Retention, ScheduleRow, verify_certificate

YEAR = 365.25


async def add_item(server: TestServer, consultation_id: str, kind: str = "recording",
                   classification: Optional[str] = "non_evidential", objects: int = 2) -> dict[str, Any]:
    """An evidence item as recordings and uploads register one: a row, and objects in the store."""
    app = server.app
    item_id = str(uuid.uuid4())
    prefix = f"{kind}s/{consultation_id}/{item_id}/"
    now = app[RETENTION].clock()
    digest = hashlib.sha256()
    for n in range(objects):
        data = f"{item_id} part {n}".encode() * 100
        digest.update(data)
        await app[STORE].add_bytes(f"{prefix}part-{n:03d}.bin", data)
    async with app[DB]() as db:
        db.add(EvidenceItem(id=item_id, kind=kind, consultation_id=consultation_id, prefix=prefix, created_at=now,
                            sha256=digest.hexdigest(), size=objects * 1000))
        if kind == "recording":
            db.add(Recording(id=item_id, consultation_id=consultation_id, participant="victim", status="complete",
                             started_at=now, ended_at=now, head_hash="0" * 64, classification=classification))
        await db.commit()
    return {"id": item_id, "prefix": prefix, "sha256": digest.hexdigest()}


async def seed_consultation(db_factory: Any, clock: Any) -> str:
    """A consultation straight in the database (where no staff client is needed)."""
    from evr.db import Consultation, User

    async with db_factory() as db:
        user = User(username=f"u{uuid.uuid4().hex[:8]}", role="officer", password_hash="x", created_at=clock())
        db.add(user)
        await db.flush()
        cid = str(uuid.uuid4())
        db.add(Consultation(id=cid, cad_ref="CAD-1", status="closed", created_by=user.id, created_at=clock(),
                            victim={}, eligibility={}, token_hash=uuid.uuid4().hex, expires_at=clock()))
        await db.commit()
    return cid


async def objects(server: TestServer, prefix: str) -> list[str]:
    return await server.app[STORE].keys(prefix)


async def actions(server: TestServer, **where: Any) -> list[str]:
    async with server.app[DB]() as db:
        query = select(AuditEntry.action).order_by(AuditEntry.id)
        for name, value in where.items():
            query = query.where(getattr(AuditEntry, name) == value)
        return list(await db.scalars(query))


async def row(server: TestServer, item_id: str) -> RetentionItem:
    async with server.app[DB]() as db:
        return await db.get(RetentionItem, item_id)


async def json_of(response: Any, status: int) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


@pytest.fixture
async def people(staff, settings):
    settings.session_ttl_hours = 24 * 365 * 40  # staff stay signed in across the years the clock skips
    officer = await staff("olive", "officer")
    records = await staff("rita", "records")
    consultation = await officer.create()
    return officer, records, consultation["id"]


async def classify(officer, cid: str, name: str, **extra: Any) -> dict[str, Any]:
    response = await officer.client.put(f"/api/consultations/{cid}/retention", headers=officer.headers(),
                                        json={"class": name, "reason": "offence type per crime report", **extra})
    return await json_of(response, 200)


# -- the rules ---------------------------------------------------------------------


async def test_non_evidential_recordings_go_after_31_days_with_a_certificate(server, clock, people):
    officer, records, cid = people
    kept = await add_item(server, cid, classification="evidential")
    footage = await add_item(server, cid)
    sweep = server.app[RETENTION].sweep
    clock.advance(days=30)
    assert (await sweep()).disposed == []
    assert len(await objects(server, footage["prefix"])) == 2
    clock.advance(days=1, hours=1)
    report = await sweep()
    assert report.disposed == [footage["id"]]
    # The content is gone from the store (and the item's folder with it)...
    assert await objects(server, footage["prefix"]) == []
    assert not (server.app[STORE].root / footage["prefix"]).exists()
    assert len(await objects(server, kept["prefix"])) == 2
    # ...and the certificate stays: what, its hash, who, when, the rule and the decision, signed.
    async with server.app[DB]() as db:
        cert = await db.scalar(select(DisposalCertificate).where(DisposalCertificate.item_id == footage["id"]))
    document = json.loads(cert.document)
    assert document["item"]["sha256"] == footage["sha256"] and document["rule"] == "non_evidential"
    assert document["disposed_by"] == {"name": "system", "role": "system"}
    assert document["decision"]["basis"] == "schedule" and document["objects_removed"] == 2
    assert verify_certificate(cert.document, cert.signature, server.app[SIGNING_KEY].public_key())
    assert not verify_certificate(cert.document.replace("non_evidential", "group3"), cert.signature,
                                  server.app[SIGNING_KEY].public_key())
    assert (await row(server, footage["id"])).state == "disposed"
    assert await actions(server, object=f"recording:{footage['id']}") == ["evidence.erase"]
    # The records console finds the certificate; opening the content is now refused.
    shown = await json_of(await records.get(f"/api/retention/items/{footage['id']}"), 200)
    assert shown["certificate"]["id"] == cert.id and shown["objects"] == [] and shown["state"] == "disposed"
    opened = await records.get(f"/api/retention/items/{footage['id']}/content?key={footage['prefix']}part-000.bin"
                               f"&reason=check")
    assert opened.status == 410
    assert (await sweep()).disposed == []  # nothing twice


async def test_marking_a_recording_evidential_takes_it_out_of_the_31_day_rule(server, clock, people):
    _, _, cid = people
    footage = await add_item(server, cid)
    await server.app[RETENTION].refresh()
    clock.advance(days=40)
    async with server.app[DB]() as db:  # what the recordings API does
        await db.execute(update(Recording).where(Recording.id == footage["id"]).values(classification="evidential"))
        await db.commit()
    assert (await server.app[RETENTION].sweep()).disposed == []
    assert len(await objects(server, footage["prefix"])) == 2
    assert (await row(server, footage["id"])).rule == "group3"  # the default class of its consultation


async def test_group3_is_due_for_disposal_after_six_years(server, clock, people):
    officer, records, cid = people
    await classify(officer, cid, "group3")
    upload = await add_item(server, cid, kind="upload", classification=None)
    clock.advance(days=6 * YEAR - 2)
    assert (await json_of(await records.get("/api/retention/due"), 200))["items"] == []
    clock.advance(days=3)
    due = (await json_of(await records.get("/api/retention/due"), 200))["items"]
    assert [(d["item_id"], d["action"], d["rule"]) for d in due] == [(upload["id"], "dispose", "group3")]
    # The scheduled sweep leaves MoPI items to records staff; a dry run removes nothing.
    assert (await server.app[RETENTION].sweep()).disposed == []
    dry = await json_of(await records.post("/api/retention/dispose", {"due": True}), 200)
    assert [c["item_id"] for c in dry["candidates"]] == [upload["id"]] and dry["disposed"] == []
    assert len(await objects(server, upload["prefix"])) == 2
    done = await json_of(await records.post("/api/retention/dispose", {"due": True, "execute": True}), 200)
    assert done["disposed"] == [upload["id"]] and len(done["certificates"]) == 1
    assert await objects(server, upload["prefix"]) == []
    cert = await json_of(await records.get(f"/api/retention/certificates/{done['certificates'][0]}"), 200)
    assert cert["certificate"]["disposed_by"] == {"name": "rita", "role": "records"}
    assert cert["certificate"]["item"]["sha256"] == upload["sha256"]


async def test_group2_reviews_after_ten_years_and_a_review_decides(server, clock, people):
    officer, records, cid = people
    await classify(officer, cid, "group2")
    item = await add_item(server, cid, classification="evidential")
    clock.advance(days=10 * YEAR - 2)
    assert (await json_of(await records.get("/api/retention/due"), 200))["items"] == []
    clock.advance(days=3)
    due = (await json_of(await records.get("/api/retention/due"), 200))["items"]
    assert [(d["item_id"], d["action"]) for d in due] == [(item["id"], "review")]
    # Due for review is not due for disposal.
    assert (await json_of(await records.post("/api/retention/dispose", {"due": True}), 200))["candidates"] == []
    refused = await records.post("/api/retention/dispose", {"ids": [item["id"]], "execute": True})
    assert (await json_of(refused, 409))["error"]["code"] == "not_due"
    next_review = (clock() + timedelta(days=2 * YEAR)).date().isoformat()
    reviewed = await json_of(await records.post("/api/retention/review", {
        "id": item["id"], "decision": "retain", "reason": "linked to an open investigation",
        "criteria": ["serious_harm", "links_associations"], "next_review": next_review}), 201)
    assert reviewed["reviews"][0]["next_review_at"].startswith(next_review)
    assert (await json_of(await records.get("/api/retention/due"), 200))["items"] == []
    clock.advance(days=2 * YEAR + 1)
    assert [d["action"] for d in (await json_of(await records.get("/api/retention/due"), 200))["items"]] == ["review"]
    await json_of(await records.post("/api/retention/review", {
        "id": item["id"], "decision": "dispose", "reason": "no longer necessary: no criteria apply"}), 201)
    assert [d["action"] for d in (await json_of(await records.get("/api/retention/due"), 200))["items"]] == ["dispose"]
    done = await json_of(await records.post("/api/retention/dispose", {"ids": [item["id"]], "execute": True}), 200)
    assert done["disposed"] == [item["id"]]
    cert = await json_of(await records.get(f"/api/retention/certificates?item={item['id']}"), 200)
    assert cert["certificates"][0]["certificate"]["decision"]["basis"] == "review"


async def test_group1_lasts_until_the_subject_is_100_or_reviews_every_ten_years(server, clock, people, staff):
    officer, records, cid = people
    nearly = (clock() - timedelta(days=95 * YEAR)).date()
    await classify(officer, cid, "group1", subject_dob=nearly.isoformat())
    aged = await add_item(server, cid, classification="evidential")
    other = (await officer.create())["id"]
    await classify(officer, other, "group1")  # no date of birth: reviews only
    plain = await add_item(server, other, classification="evidential")
    await server.app[RETENTION].refresh()
    due_aged, due_plain = await row(server, aged["id"]), await row(server, plain["id"])
    assert due_aged.action == "dispose" and due_aged.due_at.date() == nearly.replace(year=nearly.year + 100)
    assert due_plain.action == "review"
    assert abs((due_plain.due_at - clock()).days - 10 * YEAR) < 2
    # The date of birth is kept for the rule, never written into the audit log.
    async with server.app[DB]() as db:
        entries = list(await db.scalars(select(AuditEntry).where(AuditEntry.action == "retention.class_set")))
    assert entries and all(nearly.isoformat() not in json.dumps(e.details) for e in entries)
    assert entries[0].details["subject_dob_given"] is True


async def test_a_legal_hold_blocks_disposal_until_released(server, clock, people):
    officer, records, cid = people
    footage = await add_item(server, cid)
    held = await json_of(await records.post("/api/retention/hold", {"id": cid, "reason": "civil claim notified"}), 201)
    assert held["hold"]["scope"] == "consultation"
    again = await records.post("/api/retention/hold", {"id": cid, "reason": "again"})
    assert (await json_of(again, 409))["error"]["code"] == "already_held"
    later = await add_item(server, cid)  # a hold on a consultation covers items added later too
    clock.advance(days=32)
    assert (await server.app[RETENTION].sweep()).disposed == []
    due = (await json_of(await records.get("/api/retention/due"), 200))["items"]
    assert {d["item_id"] for d in due} == {footage["id"], later["id"]} and all(d["held"] for d in due)
    refused = await records.post("/api/retention/dispose", {"ids": [footage["id"]], "execute": True})
    assert (await json_of(refused, 409))["error"]["code"] == "held"
    dry = await json_of(await records.post("/api/retention/dispose", {"due": True}), 200)
    assert dry["candidates"] == [] and dry["held"] == 2
    assert len(await objects(server, footage["prefix"])) == 2
    in_force = await json_of(await records.get("/api/retention/holds"), 200)
    assert [(h["scope"], h["target"], h["reason"]) for h in in_force["holds"]] == [
        ("consultation", cid, "civil claim notified")]
    released = await json_of(await records.post("/api/retention/release", {"id": cid, "reason": "claim settled"}), 200)
    assert (await json_of(await records.get("/api/retention/holds"), 200))["holds"] == []
    assert len((await json_of(await records.get("/api/retention/holds?all=1"), 200))["holds"]) == 1
    assert released["released"][0]["release_reason"] == "claim settled"
    assert sorted((await server.app[RETENTION].sweep()).disposed) == sorted([footage["id"], later["id"]])
    nothing = await records.post("/api/retention/release", {"id": cid, "reason": "again"})
    assert (await json_of(nothing, 409))["error"]["code"] == "not_held"


async def test_an_item_hold_survives_the_release_of_its_consultation_hold(server, clock, people):
    _, records, cid = people
    footage = await add_item(server, cid)
    await json_of(await records.post("/api/retention/hold", {"id": cid, "reason": "inquiry"}), 201)
    await json_of(await records.post("/api/retention/hold", {"id": footage["id"], "reason": "disclosure"}), 201)
    await json_of(await records.post("/api/retention/release", {"id": cid, "reason": "inquiry closed"}), 200)
    clock.advance(days=32)
    assert (await server.app[RETENTION].sweep()).disposed == []
    assert (await row(server, footage["id"])).held


async def test_every_step_is_in_the_audit_log(server, clock, people):
    officer, records, cid = people
    footage = await add_item(server, cid)
    obj = f"recording:{footage['id']}"
    await officer.consultation(cid)
    await classify(officer, cid, "group2")
    await json_of(await records.post("/api/retention/hold", {"id": footage["id"], "reason": "disclosure"}), 201)
    await json_of(await records.post("/api/retention/release", {"id": footage["id"], "reason": "done"}), 200)
    await json_of(await records.post("/api/retention/review", {"id": footage["id"], "decision": "dispose",
                                                               "reason": "not needed"}), 201)
    opened = await records.get(f"/api/retention/items/{footage['id']}/content?key={footage['prefix']}"
                               f"part-001.bin&reason=quality check before disposal")
    assert opened.status == 200 and await opened.read()
    await json_of(await records.post("/api/retention/dispose", {"ids": [footage["id"]], "execute": True}), 200)
    await json_of(await officer.post(f"/api/consultations/{cid}/close"), 200)
    trail = await json_of(await records.get(f"/api/audit?consultation={cid}"), 200)
    steps = [(e["action"], e["actor"]) for e in trail["entries"]]
    assert steps == [
        ("consultation.create", "olive"), ("consultation.view", "olive"), ("retention.class_set", "olive"),
        ("retention.hold", "rita"), ("retention.release", "rita"), ("retention.review", "rita"),
        ("evidence.view", "rita"), ("evidence.erase", "rita"), ("consultation.close", "olive"),
    ]
    by_action = {e["action"]: e for e in trail["entries"]}
    assert by_action["consultation.create"]["details"]["collected"] == ["victim.phone"]
    assert "07700" not in json.dumps(trail)  # the contact itself is never in the log
    assert by_action["evidence.view"]["reason"] == "quality check before disposal"
    assert by_action["evidence.view"]["details"]["object"].endswith("part-001.bin")
    assert by_action["retention.class_set"]["details"] == {"from": None, "to": "group2", "subject_dob_given": False,
                                                           "items": 1}
    assert all(e["object"] == obj for e in trail["entries"][3:8])
    assert by_action["retention.hold"]["client"] == "127.0.0.1"
    assert {"auth.login"} <= set(await actions(server, actor="rita"))


async def test_roles(server, clock, people, staff):
    officer, records, cid = people
    admin = await staff("ada", "admin")
    sergeant = await staff("sam", "sergeant")
    stranger = await staff("otto", "officer")
    footage = await add_item(server, cid)
    clock.advance(days=32)
    # Officers and sergeants cannot dispose, review or hold; admin neither.
    for who in (officer, sergeant, admin):
        for path, body in (("/api/retention/dispose", {"due": True, "execute": True}),
                           ("/api/retention/review", {"id": footage["id"], "decision": "dispose", "reason": "x"}),
                           ("/api/retention/hold", {"id": cid, "reason": "x"})):
            assert (await who.post(path, body)).status == 403, (path, who)
        assert (await who.get("/api/retention/due")).status == 403
    assert len(await objects(server, footage["prefix"])) == 2
    # Only officers (for what they may see) and sergeants set the class; records staff do not.
    assert (await sergeant.client.put(f"/api/consultations/{cid}/retention", headers=sergeant.headers(),
                                      json={"class": "group2", "reason": "serious"})).status == 200
    assert (await stranger.client.put(f"/api/consultations/{cid}/retention", headers=stranger.headers(),
                                      json={"class": "group3", "reason": "x"})).status == 404
    assert (await records.client.put(f"/api/consultations/{cid}/retention", headers=records.headers(),
                                     json={"class": "group3", "reason": "x"})).status == 403
    bad = await officer.client.put(f"/api/consultations/{cid}/retention", headers=officer.headers(),
                                   json={"class": "group9", "reason": "x"})
    assert (await json_of(bad, 422))["error"]["code"] == "unknown_class"
    no_reason = await officer.client.put(f"/api/consultations/{cid}/retention", headers=officer.headers(),
                                         json={"class": "group3"})
    assert (await json_of(no_reason, 422))["error"]["code"] == "missing_field"
    # Records and admin read the audit log; officers and sergeants do not. Nobody deletes it.
    assert (await admin.get("/api/audit")).status == 200 and (await records.get("/api/audit")).status == 200
    assert (await officer.get("/api/audit")).status == 403 and (await sergeant.get("/api/audit")).status == 403
    for method in ("DELETE", "PUT", "PATCH", "POST"):
        response = await admin.client.request(method, "/api/audit", headers=admin.headers())
        assert response.status == 405 and (await response.json())["error"]["code"] == "method_not_allowed"
    # Records staff open content only with a reason.
    key = f"{footage['prefix']}part-000.bin"
    no_why = await records.get(f"/api/retention/items/{footage['id']}/content?key={key}")
    assert (await json_of(no_why, 422))["error"]["code"] == "reason_required"
    assert "evidence.view" not in await actions(server)
    assert (await officer.get(f"/api/retention/items/{footage['id']}/content?key={key}&reason=x")).status == 403
    opened = await records.get(f"/api/retention/items/{footage['id']}/content?key={key}&reason=complaint review")
    assert opened.status == 200 and await opened.read() == f"{footage['id']} part 0".encode() * 100
    for bad in ("recordings/../x", f"{footage['prefix']}../x", footage["prefix"], f"{footage['prefix']}a%20b"):
        response = await records.get(f"/api/retention/items/{footage['id']}/content?key={bad}&reason=x")
        assert (await json_of(response, 404))["error"]["code"] == "not_found", bad


async def test_bad_input_gets_clear_errors(server, people):
    officer, records, cid = people
    for path, code in (("/api/audit?since=yesterday", "invalid_parameter"), ("/api/audit?limit=0", "invalid_parameter"),
                       ("/api/audit?colour=red", "unknown_parameter"), ("/api/retention/due?before=soon",
                                                                        "invalid_parameter"),
                       ("/api/audit?cursor=abc", "invalid_parameter")):
        body = await json_of(await records.get(path), 400)
        assert body["error"]["code"] == code and body["error"]["message"]
    for body, code in (({"id": cid, "decision": "maybe", "reason": "x"}, "invalid_decision"),
                       ({"id": cid, "decision": "retain", "reason": " "}, "reason_required"),
                       ({"id": cid, "decision": "retain", "reason": "x", "next_review": "2001-01-01"},
                        "invalid_next_review"),
                       ({"id": cid, "decision": "retain", "reason": "x", "criteria": ["vibes"]}, "invalid_criteria"),
                       ({"id": cid, "decision": "dispose", "reason": "x", "next_review": "2099-01-01"},
                        "invalid_next_review")):
        assert (await json_of(await records.post("/api/retention/review", body), 422))["error"]["code"] == code
    assert (await records.post("/api/retention/hold", {"id": str(uuid.uuid4()), "reason": "x"})).status == 404
    assert (await records.post("/api/retention/hold", {"id": "../../etc", "reason": "x"})).status == 404
    not_json = await records.client.post("/api/retention/hold", data="{", headers=records.headers())
    assert (await json_of(not_json, 400))["error"]["code"] == "malformed_json"
    both = await records.post("/api/retention/dispose", {"due": True, "ids": [cid]})
    assert (await json_of(both, 422))["error"]["code"] == "missing_field"
    dob = await officer.client.put(f"/api/consultations/{cid}/retention", headers=officer.headers(),
                                   json={"class": "group1", "reason": "x", "subject_dob": "31/05/1980"})
    assert (await json_of(dob, 422))["error"]["code"] == "invalid_dob"


async def test_audit_search_filters_and_pages(server, people):
    officer, records, cid = people
    for _ in range(3):
        await officer.consultation(cid)
    page = await json_of(await records.get(f"/api/audit?object=consultation:{cid}&action=consultation.view&limit=2"),
                         200)
    assert [e["action"] for e in page["entries"]] == ["consultation.view"] * 2 and page["next_cursor"]
    rest = await json_of(await records.get(f"/api/audit?object=consultation:{cid}&action=consultation.view&limit=2"
                                           f"&cursor={page['next_cursor']}"), 200)
    assert len(rest["entries"]) == 1 and rest["next_cursor"] is None
    family = await json_of(await records.get("/api/audit?action=consultation.&actor=olive"), 200)
    assert {e["action"] for e in family["entries"]} == {"consultation.create", "consultation.view"}
    newest = await json_of(await records.get("/api/audit?order=desc&limit=1"), 200)
    assert newest["entries"][0]["action"] == "audit.search"  # searching the log is itself logged
    future = await json_of(await records.get("/api/audit?since=2999-01-01"), 200)
    assert future["entries"] == []


async def test_records_console_page_and_csv_export(server, clock, people):
    officer, records, cid = people
    footage = await add_item(server, cid)
    page = await records.get("/records")
    html = await page.text()
    assert page.status == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert '<script type="module" src="/static/records.js"></script>' in html and "<script>" not in html
    assert (await records.get("/static/records.js")).status == 200
    clock.advance(days=32)
    response = await records.get("/api/retention/schedule.csv")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert [(r["item_id"], r["rule"], r["action"], r["cad_ref"]) for r in rows] == [
        (footage["id"], "non_evidential", "dispose", "CAD-2026-000123")]
    assert "retention.export" in await actions(server, actor="rita")
    assert (await officer.get("/api/retention/schedule.csv")).status == 403


def test_schedule_csv_cells_carry_no_spreadsheet_formulas():
    """The web export and `evr retention due --format csv` write rows with ScheduleRow.csv."""
    row = ScheduleRow("i", "upload", "c", "=HYPERLINK(\"x\")", "-1+1", None, "dispose", "active", False, None, 0,
                      datetime(2026, 1, 1, tzinfo=timezone.utc))
    cells = dict(zip(CSV_COLUMNS, row.csv()))
    assert cells["cad_ref"] == "'=HYPERLINK(\"x\")" and cells["rule"] == "'-1+1"
    assert cells["due_at"] == "" and cells["held"] == "False" and cells["item_id"] == "i"


# -- the sweep inside `evr serve`, other stores, and the configuration -----------------


async def test_the_sweep_runs_by_itself_in_the_service(settings, clock, tmp_path):
    settings.retention = {"sweep_minutes": 0.005}
    app = create_app(settings, clock=clock)
    server = TestServer(app)
    await server.start_server()
    try:
        cid = await seed_consultation(app[DB], clock)
        footage = await add_item(server, cid)
        clock.advance(days=32)
        await eventually(lambda: row(server, footage["id"]), lambda found: found is not None and
                         found.state == "disposed", timeout=5.0, what="the scheduled sweep's disposal")
        assert await objects(server, footage["prefix"]) == []
        assert await actions(server, object=f"recording:{footage['id']}") == ["evidence.erase"]
    finally:
        await server.close()


class LockedStore(FileStore):
    """A store whose objects are under a retention lock (like S3 Object Lock) for now."""

    until: Optional[datetime] = None

    async def dispose_all_versions(self, prefix: str) -> Disposed:
        if self.until is not None:
            raise StillLocked(self.until, removed=0)
        return await super().dispose_all_versions(prefix)


async def test_a_store_lock_makes_the_item_wait_and_it_is_finished_later(server, clock, people):
    officer, records, cid = people
    footage = await add_item(server, cid)
    service = server.app[RETENTION]
    store = LockedStore(server.app[STORE].root, server.app[STORE].master)
    service.store = store
    store.until = clock() + timedelta(days=40)
    clock.advance(days=32)
    report = await service.sweep()
    assert report.disposed == [] and list(report.waiting) == [footage["id"]]
    waiting = await row(server, footage["id"])
    assert waiting.state == "waiting" and abs((waiting.due_at - store.until).total_seconds()) < 1
    assert "retention.dispose_waiting" in await actions(server, object=f"recording:{footage['id']}")
    clock.advance(days=5)
    assert (await service.sweep()).waiting == {}  # the lock has not expired: nothing tried
    store.until = None
    clock.advance(days=5)
    assert (await service.sweep()).disposed == [footage["id"]]
    assert await objects(server, footage["prefix"]) == []


async def test_disposal_on_s3_removes_every_version(settings, clock, s3_server):
    endpoint = s3_server
    engine = make_engine(settings.db_url)
    await migrate(engine)
    db = sessionmaker(engine)
    store = make_s3_store(endpoint, MasterKey(bytes(32)))
    key = Ed25519PrivateKey.generate()
    audit = AuditLog(db, clock, key, store, 1000)
    service = Retention(db, audit, store, Policy.from_config({}), clock, key)
    try:
        cid = await seed_consultation(db, clock)
        rid = str(uuid.uuid4())
        prefix = f"recordings/{cid}/{rid}/"
        await store.add_bytes(prefix + "seg-000001.webm", b"frames" * 100)
        await store.add_bytes(prefix + "manifest.json", b"{}")
        async with db() as session:
            session.add(EvidenceItem(id=rid, kind="recording", consultation_id=cid, prefix=prefix, created_at=clock(),
                                     sha256="ab" * 32, size=602))
            session.add(Recording(id=rid, consultation_id=cid, participant="victim", status="complete",
                                  started_at=clock(), head_hash="0" * 64, classification="non_evidential"))
            await session.commit()
        client = s3_client(endpoint)
        assert len(client.list_object_versions(Bucket=store.bucket, Prefix=prefix).get("Versions", [])) == 2
        clock.advance(days=32)
        assert (await service.sweep()).disposed == [rid]
        listed = client.list_object_versions(Bucket=store.bucket, Prefix=prefix)
        assert listed.get("Versions", []) == [] and listed.get("DeleteMarkers", []) == []
        async with db() as session:
            assert await session.scalar(select(DisposalCertificate.item_id)) == rid
    finally:
        await store.close()
        await engine.dispose()


def test_policy_configuration():
    policy = Policy.from_config({"default_class": "", "classes": {
        "group3": {"period_years": 7}, "traffic": {"label": "Traffic", "period_days": 400, "action": "dispose"}}})
    assert policy.classes["group3"].period.years == 7 and policy.classes["group3"].action == "dispose"
    assert policy.default_class is None and "traffic" in {c.name for c in policy.case_classes()}
    start = datetime(2024, 2, 29, tzinfo=timezone.utc)
    assert policy.due("group3", start, None, None).due_at == datetime(2031, 2, 28, tzinfo=timezone.utc)
    assert policy.due("unclassified", start, None, None).due_at is None
    assert policy.due("group1", start, date(1930, 6, 1), None).due_at == datetime(2030, 6, 1, tzinfo=timezone.utc)
    for bad, message in (({"classes": {"group3": {"period_years": 0}}}, "period_years"),
                         ({"classes": {"group2": {"colour": "red"}}}, "colour"),
                         ({"default_class": "non_evidential"}, "default_class"),
                         ({"sweep_minutes": -1}, "sweep_minutes"),
                         ({"classes": {"x": {"label": "no period"}}}, "period"),
                         ({"classes": {"group3": {"action": "shred"}}}, "action"),
                         ({"holidays": 3}, "holidays")):
        with pytest.raises(ValueError, match=message):
            Policy.from_config(bad)
    with pytest.raises(ValueError, match="retention"):
        Settings.load(environ={}, retention={"classes": {"group3": {"period_years": "six"}}})


async def test_a_changed_policy_moves_due_dates(server, clock, people):
    officer, records, cid = people
    await classify(officer, cid, "group3")
    item = await add_item(server, cid, kind="upload", classification=None)
    service = server.app[RETENTION]
    await service.refresh()
    six = (await row(server, item["id"])).due_at
    service.policy = Policy.from_config({"classes": {"group3": {"period_years": 8}}})
    await service.refresh()
    assert (await row(server, item["id"])).due_at.year == six.year + 2


async def test_cli_actor_and_service_reject_unknown_ids(server):
    service = server.app[RETENTION]
    from evr.retention.service import RetentionError

    with pytest.raises(RetentionError) as raised:
        await service.hold(Actor("op", "cli"), str(uuid.uuid4()), "reason")
    assert raised.value.status == 404


# -- the command line ----------------------------------------------------------------


def test_evr_retention_commands(tmp_path):
    """due, hold, release, review and dispose, as records staff run them on the server."""
    import subprocess
    import sys

    from evr.evidence import make_store
    from evr.timeutil import utcnow

    data = tmp_path / "data"
    settings = Settings.load(data_dir=data, environ={})
    ago = utcnow() - timedelta(days=40)

    async def fill() -> tuple[str, str, str]:
        data.mkdir()
        engine = make_engine(settings.db_url)
        await migrate(engine)
        store = make_store(settings)
        cid = await seed_consultation(sessionmaker(engine), lambda: ago)
        ids = []
        async with sessionmaker(engine)() as db:
            for classification in ("non_evidential", "evidential"):
                rid = str(uuid.uuid4())
                prefix = f"recordings/{cid}/{rid}/"
                await store.add_bytes(prefix + "seg-000001.webm", b"media")
                db.add(EvidenceItem(id=rid, kind="recording", consultation_id=cid, prefix=prefix, created_at=ago,
                                    sha256="cd" * 32, size=5))
                db.add(Recording(id=rid, consultation_id=cid, participant="victim", status="complete",
                                 started_at=ago, head_hash="0" * 64, classification=classification))
                ids.append(rid)
            await db.commit()
        await store.close()
        await engine.dispose()
        return cid, ids[0], ids[1]

    cid, footage, evidential = asyncio.run(fill())

    def evr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "evr", "retention", *args, "--data", str(data)],
                              capture_output=True, text=True, timeout=60)

    listed = evr("due")
    assert listed.returncode == 0 and footage in listed.stdout and evidential not in listed.stdout
    assert "1 item(s) due" in listed.stdout
    assert evr("due", "--before", "next tuesday").returncode == 2
    as_csv = evr("due", "--format", "csv").stdout.splitlines()
    assert as_csv[0].startswith("item_id,kind,consultation_id") and as_csv[1].startswith(footage)
    assert evr("hold", footage).returncode == 2  # --reason is required
    assert evr("hold", footage, "--reason", "complaint received").returncode == 0
    dry = evr("dispose", "--due")
    assert dry.returncode == 0 and "0 item(s) would be disposed, 1 due but held" in dry.stdout
    assert evr("release", footage, "--reason", "complaint closed").returncode == 0
    again = evr("release", footage, "--reason", "again")
    assert again.returncode == 1 and "No legal hold" in again.stderr
    dry = evr("dispose", "--due")
    assert f"would dispose recording {footage}" in dry.stdout
    assert len(list((data / "evidence" / "recordings" / cid).iterdir())) == 2
    done = evr("dispose", "--due", "--execute")
    assert done.returncode == 0 and f"disposed {footage}: certificate" in done.stdout, done.stderr
    assert [p.name for p in (data / "evidence" / "recordings" / cid).iterdir()] == [evidential]
    late = evr("review", footage, "--decision", "retain", "--reason", "too late")
    assert late.returncode == 1 and "disposed" in late.stderr
    reviewed = evr("review", evidential, "--decision", "retain", "--reason", "linked to a live case",
                   "--criterion", "serious_harm", "--next-review", "2035-01-31")
    assert reviewed.returncode == 0 and "next review 2035-01-31" in reviewed.stdout, reviewed.stderr
    assert evr("review", evidential, "--decision", "keep", "--reason", "x").returncode == 2
    assert evr("classes").stdout.startswith("non_evidential")
    verify = subprocess.run([sys.executable, "-m", "evr", "audit", "verify", "--data", str(data)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "OK" in verify.stdout
    with sqlite3.connect(data / "evr.sqlite3") as db:
        trail = db.execute("SELECT action, role FROM audit_log WHERE object = ? ORDER BY id",
                           (f"recording:{footage}",)).fetchall()
    assert trail == [("retention.hold", "cli"), ("retention.release", "cli"), ("evidence.erase", "cli")]
