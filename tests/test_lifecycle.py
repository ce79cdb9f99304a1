"""The consultation lifecycle has one owner: :class:`evr.consultations.Consultations`
computes the status from what the room reports and from a close (:func:`next_status`),
writes it with its audit entry in one transaction, and announces it once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from evr.consultations import Presence, next_status
from evr.db import AuditEntry, Consultation
from evr.http import DB, HUB

SOURCES = Path(__file__).resolve().parent.parent

ALONE = Presence()
VICTIM = Presence(victim_on=True)
STAFF = Presence(staff_on=True)
BOTH = Presence(victim_on=True, staff_on=True)
PAUSED = Presence(victim_on=True, staff_on=True, paused=True)


@pytest.mark.parametrize("current, presence, close, expected", [
    ("waiting", None, False, "waiting"),       # nothing reported: unchanged
    ("waiting", VICTIM, False, "waiting"),     # the victim in the waiting room
    ("waiting", STAFF, False, "waiting"),      # the officer before the victim
    ("waiting", BOTH, False, "live"),          # together: the call is under way
    ("live", ALONE, False, "live"),            # someone dropped: still under way
    ("live", PAUSED, False, "paused"),
    ("paused", BOTH, False, "live"),           # resumed
    ("paused", ALONE, False, "live"),          # resumed with nobody connected
    ("waiting", PAUSED, False, "paused"),      # a pause before anyone met
    ("waiting", None, True, "closed"),
    ("live", BOTH, True, "closed"),
    ("closed", BOTH, False, "closed"),         # closed is final
    ("closed", PAUSED, False, "closed"),
])
def test_the_one_rule_of_the_lifecycle(current, presence, close, expected):
    assert next_status(current, presence, close=close) == expected


def test_nothing_but_the_owner_writes_a_consultations_status():
    writes = re.compile(r"\bconsultation\.status\s*=(?!=)|update\(Consultation\)[^\n]*\n?[^\n]*status=")
    found = [
        str(path.relative_to(SOURCES))
        for folder in ("server", "incidents", "recording", "retention", "statements", "uploads")
        for path in (SOURCES / folder).rglob("*.py")
        if path.name != "consultations.py" and writes.search(path.read_text())
    ]
    assert found == []


async def _trail(server, cid: str) -> list[tuple[str, str, object]]:
    async with server.app[DB]() as db:
        rows = await db.scalars(select(AuditEntry).where(AuditEntry.consultation_id == cid,
                                                         AuditEntry.action.in_(["consultation.status",
                                                                                "consultation.close"]))
                                .order_by(AuditEntry.id))
        return [(e.action, e.actor, e.details) for e in rows]


async def _row_status(server, cid: str) -> str:
    async with server.app[DB]() as db:
        return (await db.get(Consultation, cid)).status


async def test_every_change_is_written_once_with_who_made_it_and_announced(call, server):
    c = await call()
    await c.console.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
    assert await _row_status(server, c.id) == "live"
    await c.victim.send({"type": "pause"})
    await c.console.wait_for(lambda m: m["type"] == "state" and m["status"] == "paused")
    await c.console.send({"type": "resume"})
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
    await c.victim.send({"type": "resume"})  # nothing to resume: no change, no entry
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200
    assert await _row_status(server, c.id) == "closed"
    assert await _trail(server, c.id) == [
        ("consultation.status", "system", {"from": "waiting", "to": "live"}),
        ("consultation.status", "victim", {"from": "live", "to": "paused"}),
        ("consultation.status", "alice", {"from": "paused", "to": "live"}),
        ("consultation.close", "alice", {}),
    ]
    # Announced once each: one state message per status, in order, then closed.
    statuses = [m["status"] for m in c.victim.messages if m["type"] == "state"]
    changes = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    assert changes[-3:] == ["live", "paused", "live"]
    assert c.victim.messages[-1]["type"] == "closed"
    # Closing again changes nothing and writes nothing.
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200
    assert len(await _trail(server, c.id)) == 4


async def test_a_close_whose_audit_entry_fails_leaves_the_call_as_it_was(call, server, audit_fails):
    c = await call()
    await c.console.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
    audit_fails()
    response = await c.officer.post(f"/api/consultations/{c.id}/close")
    assert response.status == 500
    assert await _row_status(server, c.id) == "live"
    assert server.app[HUB].consultations.current(c.id) == "live"
    assert c.id in server.app[HUB].rooms and not c.victim.closed.is_set()
    assert (await c.phone.get(c.link.path)).status == 200  # the link still works


async def test_a_pause_whose_audit_entry_fails_is_not_half_made(call, server, audit_fails):
    c = await call()
    await c.console.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
    audit_fails()
    await c.victim.send({"type": "pause"})
    await c.victim.wait_for(lambda m: m["type"] == "error" and m["code"] == "internal_error")
    assert await _row_status(server, c.id) == "live"
    assert server.app[HUB].consultations.current(c.id) == "live"
    # The failure came back before any announcement could: none was made.
    assert [m for m in c.victim.messages + c.console.messages if m.get("status") == "paused"] == []
    assert not server.app[HUB].rooms[c.id].paused  # media flows as the status says
