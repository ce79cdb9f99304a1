"""The EVR queue through the HTTP contract: incidents, triage, the queue and its
atomic take, the call, the investigation record, the review, crime outcomes, API keys."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import ELIGIBLE
from sqlalchemy import select

from evr.db import AuditEntry, Consultation, Incident, IncidentEvent
from evr.http import DB


def _incident(cad: str = "CAD-2026-000123", hours_ago: float = 1.0, **extra: Any) -> dict[str, Any]:
    reported = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
    return {"cad_ref": cad, "grade": 3, "category": "burglary", "reported_at": reported.isoformat(),
            "summary": "Shed broken into overnight.",
            "victim": {"name": "Sam Victim", "phone": "07700 900123", "preferred_contact": "sms", "language": "en"},
            "eligibility": ELIGIBLE, "vulnerability": False, "high_harm": False, **extra}


INVESTIGATION = {"summary": "Bicycle taken from the shed.", "offence": "Burglary (non-dwelling)",
                 "suspect": {"identified": False, "details": ""}, "witnesses": [{"name": "Neighbour"}],
                 "lines_of_enquiry": ["CCTV at number 12"],
                 "safeguarding": {"risk": "standard", "referrals": [], "advice_given": True}}


async def _json(response: Any, status: int) -> Any:
    assert response.status == status, await response.text()
    return await response.json() if status != 204 else None


async def _snapshot(server: Any, incident_id: str) -> tuple[Any, list[Any]]:
    """The row and its timeline, to show a refusal changed nothing."""
    async with server.app[DB]() as db:
        row = await db.get(Incident, incident_id)
        events = list(await db.scalars(select(IncidentEvent).where(IncidentEvent.incident_id == incident_id)))
        return ({c.name: getattr(row, c.name) for c in Incident.__table__.columns},
                [(e.kind, e.from_state, e.to_state) for e in events])


async def _actions(server: Any, incident_id: str) -> list[tuple[str, str, str]]:
    async with server.app[DB]() as db:
        rows = await db.scalars(select(AuditEntry).where(AuditEntry.object == f"incident:{incident_id}")
                                .order_by(AuditEntry.id))
        return [(e.action, e.actor, e.role) for e in rows]


@pytest.fixture
def team(staff: Any) -> Any:
    async def make() -> Any:
        handler = await staff("carl", "call_handler")
        sergeant = await staff("sue", "sergeant")
        officer = await staff("alice", "officer")
        return handler, sergeant, officer

    return make


async def test_the_walk_through_from_entry_to_review(team, staff, server, clock):
    handler, sergeant, officer = await team()
    created = await _json(await handler.post("/api/incidents", _incident()), 201)
    iid = created["id"]
    assert created["state"] == "triage" and created["cad_ref"] == "CAD-2026-000123"
    assert created["timeline"][0]["to"] == "triage" and created["timeline"][0]["actor"] == "carl"

    queued = await _json(await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "queue",
                                                                               "reason": "Suitable"}), 200)
    assert queued["state"] == "queued"
    board = await _json(await officer.get("/api/queue"), 200)
    [item] = board["incidents"]
    assert item["id"] == iid and item["waiting_minutes"] in (59, 60, 61) and item["overdue"] is False
    target = datetime.fromisoformat(item["target_at"])
    assert target - datetime.fromisoformat(item["reported_at"]) == timedelta(hours=48)

    taken = await _json(await officer.post("/api/queue/take"), 200)
    assert taken["id"] == iid and taken["state"] == "dispatched" and taken["dispatched_to"] == "alice"
    assert (await officer.post("/api/queue/take")).status == 204
    phoned = await _json(await officer.post(f"/api/incidents/{iid}/phoned"), 200)
    assert phoned["phoned_at"] and phoned["timeline"][-1]["kind"] == "phoned"

    consultation = await _json(await officer.post(f"/api/incidents/{iid}/consultation"), 201)
    assert consultation["incident_id"] == iid and consultation["status"] == "waiting"
    assert consultation["message"]["channel"] == "sms" and "/j/" in consultation["join_url"]
    incident = await _json(await officer.get(f"/api/incidents/{iid}"), 200)
    assert incident["state"] == "in_call" and incident["arrived_at"] is None
    assert (await officer.consultation(consultation["id"]))["incident_id"] == iid

    # The officer joins the call: the incident's arrival is the consultation's.
    ws = await officer.client.ws_connect(f"/api/consultations/{consultation['id']}/ws")
    await ws.receive_json(timeout=10)
    await ws.close()
    incident = await _json(await officer.get(f"/api/incidents/{iid}"), 200)
    seen = (await officer.consultation(consultation["id"]))["arrived_at"]
    assert incident["arrived_at"] == seen and seen is not None
    assert (await officer.post(f"/api/consultations/{consultation['id']}/close")).status == 200

    submitted = await _json(await officer.post(f"/api/incidents/{iid}/investigation", INVESTIGATION), 200)
    assert submitted["state"] == "awaiting_review" and submitted["submitted_at"]
    assert set(submitted["investigation"]["evidence"]) == {"recordings", "uploads", "statements"}
    # The review is due 24 h after the call closed.
    closed_at = datetime.fromisoformat(submitted["call_closed_at"])
    assert datetime.fromisoformat(submitted["review_due_at"]) - closed_at == timedelta(hours=24)

    no_plan = await sergeant.post(f"/api/incidents/{iid}/review", {"outcome": "evr_desk_enquiries"})
    assert no_plan.status == 422 and (await no_plan.json())["error"]["fields"] == ["investigation_plan"]
    back = await _json(await sergeant.post(f"/api/incidents/{iid}/review", {
        "outcome": "evr_desk_enquiries", "investigation_plan": "Check CCTV", "reason": "More to do"}), 200)
    assert back["state"] == "evr_desk_enquiries" and back["review_overdue"] is False
    again = await _json(await officer.post(f"/api/incidents/{iid}/investigation", INVESTIGATION), 200)
    assert again["state"] == "awaiting_review"

    clock.advance(hours=25)  # more than 24 h after the call closed (sessions end after 12 h)
    sergeant = await staff("sian", "sergeant")
    final = await _json(await sergeant.post(f"/api/incidents/{iid}/review", {"outcome": "finalised"}), 200)
    assert final["state"] == "finalised" and final["review_overdue"] is True and final["reviewed_at"]
    outcome = await _json(await sergeant.post(f"/api/incidents/{iid}/crime_outcome", {"code": 1}), 200)
    assert outcome["crime_outcome"]["code"] == 1 and outcome["crime_outcome"]["positive"] is True
    assert [(e["from"], e["to"]) for e in outcome["timeline"] if e["from"] != e["to"]] == [
        (None, "triage"), ("triage", "queued"), ("queued", "dispatched"), ("dispatched", "in_call"),
        ("in_call", "awaiting_review"), ("awaiting_review", "evr_desk_enquiries"),
        ("evr_desk_enquiries", "awaiting_review"), ("awaiting_review", "finalised")]
    kinds = [e["kind"] for e in outcome["timeline"]]
    assert {"phoned", "arrived", "call_closed", "crime_outcome"} <= set(kinds)
    actions = [a for a, _, _ in await _actions(server, iid)]
    assert {"incident.create", "incident.triage", "incident.take", "incident.call", "incident.arrived",
            "incident.investigation", "incident.review", "incident.crime_outcome", "incident.view"} <= set(actions)
    # The same CAD reference again, now that the incident is closed: a new incident.
    assert (await (await staff("cleo", "call_handler")).post("/api/incidents", _incident())).status == 201


@pytest.mark.parametrize("missing", ["adult_or_carer_present", "offender_absent", "safe_location", "consent"])
async def test_eligibility_false_or_missing_is_a_422_naming_it(staff, missing):
    handler = await staff("carl", "call_handler")
    answers = {**ELIGIBLE, missing: False}
    response = await handler.post("/api/incidents", _incident(eligibility=answers))
    error = (await _json(response, 422))["error"]
    assert missing in error["message"] and error["fields"] == [missing]
    del answers[missing]
    assert (await handler.post("/api/incidents", _incident(eligibility=answers))).status == 422


async def test_the_same_cad_ref_while_open_is_409(staff):
    handler = await staff("carl", "call_handler")
    await _json(await handler.post("/api/incidents", _incident()), 201)
    error = (await _json(await handler.post("/api/incidents", _incident()), 409))["error"]
    assert error["code"] == "duplicate_cad_ref"


async def test_roles_decide_who_may_do_what(team, staff):
    handler, sergeant, officer = await team()
    records = await staff("rita", "records")
    admin = await staff("adam", "admin")
    other_handler = await staff("cora", "call_handler")
    assert (await officer.post("/api/incidents", _incident())).status == 403
    iid = (await _json(await handler.post("/api/incidents", _incident()), 201))["id"]
    for outsider in (records, admin):
        assert (await outsider.get("/api/incidents")).status == 403
        assert (await outsider.get(f"/api/incidents/{iid}")).status == 403
    assert (await _json(await other_handler.get("/api/incidents"), 200))["incidents"] == []
    assert (await other_handler.get(f"/api/incidents/{iid}")).status == 404
    assert [i["id"] for i in (await _json(await handler.get("/api/incidents"), 200))["incidents"]] == [iid]
    # In triage an officer sees nothing of it; a call handler may not triage, take or review.
    assert (await officer.get(f"/api/incidents/{iid}")).status == 404
    assert (await handler.post(f"/api/incidents/{iid}/triage", {"decision": "queue"})).status == 403
    assert (await sergeant.post("/api/queue/take")).status == 403
    assert (await handler.post("/api/queue/take")).status == 403
    assert (await handler.get("/api/queue")).status == 403
    assert (await officer.post(f"/api/incidents/{iid}/review", {"outcome": "finalised"})).status == 403


async def test_triage_refusals_change_nothing(team, server, users):
    handler, sergeant, officer = await team()
    await users("sam", "sergeant")
    await users("olly", "officer")
    async with server.app[DB]() as db:
        from evr.db import User

        olly = await db.scalar(select(User).where(User.username == "olly"))
        olly.disabled = True
        await db.commit()
    iid = (await _json(await handler.post("/api/incidents", _incident()), 201))["id"]
    before = await _snapshot(server, iid)
    for name in ("nobody", "sam", "olly"):
        response = await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "allocate", "officer": name})
        error = (await _json(response, 422))["error"]
        assert error["fields"] == ["officer"] and name in error["message"]
    response = await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "reject"})
    assert (await _json(response, 422))["error"]["code"] == "reason_required"
    assert await _snapshot(server, iid) == before
    await _json(await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "reject", "reason": "Unsafe"}), 200)
    after = await _snapshot(server, iid)
    # Out of order: 409 naming the state and what it must be; nothing changes.
    for path, body in (("triage", {"decision": "queue"}), ("review", {"outcome": "finalised"}),
                       ("crime_outcome", {"code": 3})):
        error = (await _json(await sergeant.post(f"/api/incidents/{iid}/{path}", body), 409))["error"]
        assert error["code"] == "invalid_state" and error["state"] == "rejected" and "rejected" in error["message"]
    assert (await sergeant.post(f"/api/incidents/{iid}/review", {"outcome": "finalised"})).status == 409
    assert await _snapshot(server, iid) == after


async def test_an_officer_gets_their_allocated_incidents_first_then_the_oldest_queued(team, staff):
    handler, sergeant, officer = await team()
    bob = await staff("bob", "officer")
    ids = {}
    for cad, hours in (("CAD-A", 5), ("CAD-B", 9), ("CAD-C", 1), ("CAD-D", 3)):
        ids[cad] = (await _json(await handler.post("/api/incidents", _incident(cad, hours)), 201))["id"]
    for cad in ("CAD-A", "CAD-B"):
        await _json(await sergeant.post(f"/api/incidents/{ids[cad]}/triage", {"decision": "queue"}), 200)
    await _json(await sergeant.post(f"/api/incidents/{ids['CAD-C']}/triage",
                                    {"decision": "allocate", "officer": "alice", "reason": "High harm"}), 200)
    await _json(await sergeant.post(f"/api/incidents/{ids['CAD-D']}/triage",
                                    {"decision": "allocate", "officer": "bob"}), 200)
    board = (await _json(await officer.get("/api/queue"), 200))["incidents"]
    assert [i["cad_ref"] for i in board] == ["CAD-C", "CAD-B", "CAD-A"]  # bob's is not alice's business
    assert [i["cad_ref"] for i in (await _json(await sergeant.get("/api/queue"), 200))["incidents"]] == [
        "CAD-B", "CAD-A", "CAD-D", "CAD-C"]
    assert (await _json(await officer.post("/api/queue/take"), 200))["cad_ref"] == "CAD-C"
    assert (await _json(await officer.post("/api/queue/take"), 200))["cad_ref"] == "CAD-B"
    assert (await _json(await bob.post("/api/queue/take"), 200))["cad_ref"] == "CAD-D"
    listed = await _json(await officer.get("/api/incidents?state=dispatched"), 200)
    assert {i["cad_ref"] for i in listed["incidents"]} == {"CAD-C", "CAD-B"}
    assert (await officer.get(f"/api/incidents/{ids['CAD-D']}")).status == 404  # bob's
    # Only the dispatched officer starts the call; others get 403 or 404.
    assert (await bob.post(f"/api/incidents/{ids['CAD-C']}/consultation")).status == 404
    assert (await sergeant.post(f"/api/incidents/{ids['CAD-C']}/consultation")).status == 403
    assert (await officer.get("/api/incidents?from=not-a-time")).status == 400
    assert (await officer.get("/api/incidents?state=nonsense")).status == 400


async def test_twenty_officers_taking_at_once_get_ten_distinct_incidents_and_ten_204s(staff):
    handler = await staff("carl", "call_handler")
    sergeant = await staff("sue", "sergeant")
    for n in range(10):
        iid = (await _json(await handler.post("/api/incidents", _incident(f"CAD-{n}", 10 - n)), 201))["id"]
        await _json(await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "queue"}), 200)
    officers = [await staff(f"officer{n}", "officer") for n in range(20)]
    answers = await asyncio.gather(*(o.post("/api/queue/take") for o in officers))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 10 + [204] * 10
    taken = [await a.json() for a in answers if a.status == 200]
    assert len({t["id"] for t in taken}) == 10
    assert len({t["dispatched_to"] for t in taken}) == 10


async def test_a_change_whose_audit_entry_fails_is_not_made(team, server, audit_fails):
    handler, sergeant, officer = await team()
    iid = (await _json(await handler.post("/api/incidents", _incident()), 201))["id"]
    before = await _snapshot(server, iid)
    audit_fails()
    assert (await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "queue"})).status == 500
    assert await _snapshot(server, iid) == before


async def test_a_take_or_review_whose_audit_entry_fails_is_not_made(team, server, monkeypatch):
    from evr import audit

    handler, sergeant, officer = await team()
    iid = (await _json(await handler.post("/api/incidents", _incident()), 201))["id"]
    await _json(await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "queue"}), 200)
    real = audit.Appender.add

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        real(self, *args, **kwargs)
        raise RuntimeError("audit write failed (test fault)")

    before = await _snapshot(server, iid)
    monkeypatch.setattr(audit.Appender, "add", failing)
    assert (await officer.post("/api/queue/take")).status == 500
    monkeypatch.setattr(audit.Appender, "add", real)
    assert await _snapshot(server, iid) == before
    await _json(await officer.post("/api/queue/take"), 200)
    await _json(await officer.post(f"/api/incidents/{iid}/consultation"), 201)
    await _json(await officer.post(f"/api/incidents/{iid}/investigation", INVESTIGATION), 200)
    before = await _snapshot(server, iid)
    monkeypatch.setattr(audit.Appender, "add", failing)
    assert (await sergeant.post(f"/api/incidents/{iid}/review", {"outcome": "finalised"})).status == 500
    monkeypatch.setattr(audit.Appender, "add", real)
    assert await _snapshot(server, iid) == before


async def test_a_phone_preference_sends_no_message_and_bad_bodies_are_422(team, server):
    handler, sergeant, officer = await team()
    body = _incident(victim={"phone": "07700 900123", "preferred_contact": "phone"})
    iid = (await _json(await handler.post("/api/incidents", body), 201))["id"]
    missing = _incident("CAD-X", victim={"phone": "07700 900123", "preferred_contact": "email"})
    assert (await _json(await handler.post("/api/incidents", missing), 422))["error"]["fields"] == ["victim.email"]
    assert (await handler.post("/api/incidents", _incident("CAD-Y", grade=9))).status == 422
    assert (await handler.post("/api/incidents", _incident("CAD-Z", reported_at="yesterday"))).status == 422
    await _json(await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "queue"}), 200)
    await _json(await officer.post("/api/queue/take"), 200)
    before = await _snapshot(server, iid)
    assert (await officer.post(f"/api/incidents/{iid}/investigation", INVESTIGATION)).status == 409
    assert (await officer.post(f"/api/incidents/{iid}/investigation", {"summary": "x"})).status == 422
    assert (await officer.post(f"/api/incidents/{iid}/crime_outcome", {"code": 23})).status == 422
    assert await _snapshot(server, iid) == before
    made = await _json(await officer.post(f"/api/incidents/{iid}/consultation"), 201)
    assert made["message"] is None and made["join_url"]  # the officer reads the link out
    async with server.app[DB]() as db:
        assert (await db.get(Consultation, made["id"])).incident_id == iid


def _evr(settings: Any, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EVR_DATABASE_URL": settings.db_url}
    return subprocess.run([sys.executable, "-m", "evr", *args, "--data", str(settings.data_dir)],
                          capture_output=True, text=True, timeout=60, env=env)


async def test_api_keys_need_no_session_nor_csrf_and_are_named_in_the_audit_log(server, settings, new_client,
                                                                                 staff):
    made = await asyncio.to_thread(_evr, settings, "apikey", "add", "cad-system", "--role", "integration")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("evr_") and len(key) > 40
    listed = await asyncio.to_thread(_evr, settings, "apikey", "list")
    assert "cad-system" in listed.stdout and key not in listed.stdout
    client = await new_client()
    bearer = {"Authorization": f"Bearer {key}"}
    response = await client.post("/api/incidents", json=_incident(), headers=bearer)
    created = await _json(response, 201)
    # Named as a key wherever it acts: no user can be called that (a user name holds no colon).
    assert created["created_by"] == "key:cad-system" and created["created_by_role"] == "integration"
    assert (await _actions(server, created["id"]))[0] == ("incident.create", "key:cad-system", "integration")
    assert (await client.get(f"/api/incidents/{created['id']}", headers=bearer)).status == 200
    assert (await client.post("/api/consultations", json={}, headers=bearer)).status == 403
    unknown = await client.get("/api/incidents", headers={"Authorization": "Bearer evr_nope"})
    assert unknown.status == 401
    revoked = await asyncio.to_thread(_evr, settings, "apikey", "revoke", "cad-system")
    assert revoked.returncode == 0, revoked.stderr
    assert (await client.get("/api/incidents", headers=bearer)).status == 401
    assert (await asyncio.to_thread(_evr, settings, "apikey", "revoke", "nobody")).returncode == 1


async def test_officers_to_allocate_to_are_the_active_ones_signed_in_first(staff, server, clock):
    sergeant = await staff("sue", "sergeant")
    await staff("zoe", "officer")  # signed in (the fixture logs in)
    await staff("adam", "officer")
    await staff("bob", "call_handler")
    officers = await _json(await sergeant.get("/api/officers"), 200)
    assert officers["officers"] == [{"username": "adam", "signed_in": True}, {"username": "zoe", "signed_in": True}]
    zed = await staff("zed", "officer")
    assert (await zed.post("/api/logout")).status in (200, 204)
    officers = await _json(await sergeant.get("/api/officers"), 200)
    assert officers["officers"][-1] == {"username": "zed", "signed_in": False}
    officer = await staff("olga", "officer")
    assert (await officer.get("/api/officers")).status == 403


async def test_0012_gives_incidents_whose_call_closed_their_call_closed_at(db_url):
    from alembic import command
    from sqlalchemy import insert

    from evr.db import User, alembic_config, make_engine

    engine = make_engine(db_url)
    closed = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0011"))
            await conn.execute(insert(User.__table__).values(id=7, username="alice", role="officer",
                                                             password_hash="x", created_at=closed, disabled=False))
            call = dict(cad_ref="CAD-1", created_by=7, created_at=closed, victim={}, eligibility={}, expires_at=closed)
            await conn.execute(insert(Consultation.__table__).values([
                {**call, "id": "c1", "status": "closed", "closed_at": closed, "token_hash": "1" * 64},
                {**call, "id": "c2", "status": "live", "closed_at": None, "token_hash": "2" * 64}]))
            row = dict(state="in_call", grade=3, category="theft", reported_at=closed, summary="", victim={},
                       eligibility={}, vulnerability=False, high_harm=False, created_at=closed, created_by="carl",
                       created_by_role="call_handler", created_by_id=1, updated_at=closed)
            await conn.execute(insert(Incident.__table__).values([
                {**row, "id": "i1", "cad_ref": "CAD-1", "consultation_id": "c1"},
                {**row, "id": "i2", "cad_ref": "CAD-2", "consultation_id": "c2"},
                {**row, "id": "i3", "cad_ref": "CAD-3", "consultation_id": None, "state": "queued"}]))
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "heads"))
            found = dict((await conn.execute(select(Incident.id, Incident.call_closed_at)
                                             .order_by(Incident.id))).all())
    finally:
        await engine.dispose()
    assert found == {"i1": closed, "i2": None, "i3": None}
