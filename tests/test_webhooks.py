"""Webhooks to the command-and-control system, against a real local HTTP receiver that
fails its first attempts: every event of the walk-through once, in order, signed;
retried with backoff; an incident's events never overtake each other while another
incident's go on; nothing sent for a change rolled back; kept across a restart."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from conftest import eventually
from sqlalchemy import select
from test_incidents import INVESTIGATION, _incident, _json

from evr.config import Settings
from evr.db import WebhookDelivery
from evr.http import DB, INCIDENTS
from evr.incidents.webhooks import Webhooks, backoff, canonical, events_for, signature

SECRET = "test-webhook-secret-0123456789"


@dataclass
class Receiver:
    """The command-and-control system's end: answers ``fail`` (a list of statuses, one
    per attempt, then 204) and keeps every attempt."""

    url: str = ""
    fail: list[int] = field(default_factory=list)
    #: Incident ids whose events are refused (503) for as long as they are here.
    refuse: set[str] = field(default_factory=set)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def taken(self) -> list[dict[str, Any]]:
        return [a for a in self.attempts if a["status"] == 204]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        doc = json.loads(body)
        status = 204
        if doc["incident"]["id"] in self.refuse:
            status = 503
        elif self.fail:
            status = self.fail.pop(0)
        self.attempts.append({"status": status, "body": body, "doc": doc, "headers": dict(request.headers)})
        return web.Response(status=status)


@pytest.fixture
async def receiver(settings: Settings) -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/cad/events", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    found.url = f"http://127.0.0.1:{port}/cad/events"
    settings.webhook_url, settings.webhook_secret = found.url, SECRET
    yield found
    await runner.cleanup()


def _signed(attempt: dict[str, Any]) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), attempt["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(attempt["headers"]["X-EVR-Signature"], expected)


async def _walk_through(handler: Any, sergeant: Any, officer: Any, cad: str) -> str:
    iid = (await _json(await handler.post("/api/incidents", _incident(cad)), 201))["id"]
    await _json(await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "queue"}), 200)
    await _json(await officer.post("/api/queue/take"), 200)
    consultation = await _json(await officer.post(f"/api/incidents/{iid}/consultation"), 201)
    ws = await officer.client.ws_connect(f"/api/consultations/{consultation['id']}/ws")
    await ws.receive_json(timeout=10)
    await ws.close()
    assert (await officer.post(f"/api/consultations/{consultation['id']}/close")).status == 200
    await _json(await officer.post(f"/api/incidents/{iid}/investigation", INVESTIGATION), 200)
    await _json(await sergeant.post(f"/api/incidents/{iid}/review", {"outcome": "finalised"}), 200)
    return iid


WALK = ["incident.dispatched", "incident.arrived", "incident.submitted", "incident.reviewed", "incident.closed"]


async def test_each_event_once_in_order_signed_after_failed_attempts(receiver, staff, server, clock):
    receiver.fail = [500, 503, 404]  # the first three attempts fail, whatever they carry
    handler, sergeant, officer = (await staff("carl", "call_handler"), await staff("sue", "sergeant"),
                                  await staff("alice", "officer"))
    iid = await _walk_through(handler, sergeant, officer, "CAD-2026-000500")

    def delivered() -> list[str]:
        clock.advance(seconds=20)  # past each backoff (2, 4, 8 s): the next poll tries again
        return [a["doc"]["event"] for a in receiver.taken]

    assert await eventually(delivered, lambda got: len(got) == len(WALK), timeout=30) == WALK
    assert [a["status"] for a in receiver.attempts[:3]] == [500, 503, 404]
    # The failed attempts were all of the first event, and no later one overtook it.
    assert {a["doc"]["event"] for a in receiver.attempts[:4]} == {"incident.dispatched"}
    assert all(_signed(a) for a in receiver.attempts)
    first = receiver.attempts[:4]
    assert len({a["headers"]["X-EVR-Delivery"] for a in first}) == 1  # one delivery, tried four times
    assert len({a["body"] for a in first}) == 1  # the same bytes each time
    for attempt in receiver.taken:
        doc = attempt["doc"]
        assert set(doc) == {"event", "incident", "at"} and doc["incident"]["id"] == iid
        assert attempt["headers"]["Content-Type"] == "application/json"
        assert attempt["headers"]["X-EVR-Event"] == doc["event"]
        assert attempt["body"] == canonical(doc)  # keys sorted, no spaces: what was signed
        assert "victim" not in doc["incident"]  # the victim's details stay in EVR
        datetime.fromisoformat(doc["at"])
    states = [a["doc"]["incident"]["state"] for a in receiver.taken]
    assert states == ["dispatched", "in_call", "awaiting_review", "finalised", "finalised"]
    async with server.app[DB]() as db:
        rows = list(await db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))
    assert [r.event for r in rows] == WALK and all(r.delivered_at for r in rows)
    assert rows[0].attempts == 4 and rows[0].last_error is None and rows[1].attempts == 1


async def test_one_incident_refused_holds_back_only_its_own_events(receiver, staff, server, clock):
    handler, sergeant, officer = (await staff("carl", "call_handler"), await staff("sue", "sergeant"),
                                  await staff("alice", "officer"))
    first = (await _json(await handler.post("/api/incidents", _incident("CAD-2026-000601")), 201))["id"]
    receiver.refuse.add(first)
    await _json(await sergeant.post(f"/api/incidents/{first}/triage", {"decision": "reject",
                                                                        "reason": "Offender at the address"}), 200)
    other = await _walk_through(handler, sergeant, officer, "CAD-2026-000602")

    def taken() -> list[str]:
        clock.advance(seconds=20)
        return [a["doc"]["event"] for a in receiver.taken]

    assert await eventually(taken, lambda got: len(got) == len(WALK), timeout=30) == WALK
    assert all(a["doc"]["incident"]["id"] == other for a in receiver.taken)
    assert any(a["doc"]["incident"]["id"] == first and a["status"] == 503 for a in receiver.attempts)
    receiver.refuse.clear()
    closed = await eventually(lambda: (clock.advance(minutes=16), [
        a for a in receiver.taken if a["doc"]["incident"]["id"] == first])[1], timeout=30)
    assert [a["doc"]["event"] for a in closed] == ["incident.closed"]
    assert closed[0]["doc"]["incident"]["state"] == "rejected"


async def test_a_change_rolled_back_sends_nothing(receiver, staff, server, audit_fails):
    handler, sergeant = await staff("carl", "call_handler"), await staff("sue", "sergeant")
    iid = (await _json(await handler.post("/api/incidents", _incident("CAD-2026-000700")), 201))["id"]
    audit_fails()
    refused = await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "reject", "reason": "Not suitable"})
    assert refused.status == 500
    async with server.app[DB]() as db:
        assert list(await db.scalars(select(WebhookDelivery))) == []
    assert receiver.attempts == []


async def test_the_outbox_outlives_a_stop(receiver, staff, server, clock, settings):
    """Events written while the receiver is unreachable are sent by the next server."""
    handler, sergeant = await staff("carl", "call_handler"), await staff("sue", "sergeant")
    iid = (await _json(await handler.post("/api/incidents", _incident("CAD-2026-000800")), 201))["id"]
    await server.app[INCIDENTS].webhooks.close()  # the sender stops, as in a server killed
    await _json(await sergeant.post(f"/api/incidents/{iid}/triage", {"decision": "reject", "reason": "No"}), 200)
    async with server.app[DB]() as db:
        [row] = list(await db.scalars(select(WebhookDelivery)))
    assert row.event == "incident.closed" and row.delivered_at is None and receiver.attempts == []
    # The next server's sender, on the same database.
    later = Webhooks(settings, server.app[DB], clock)
    later.start()
    try:
        await eventually(lambda: receiver.taken, timeout=20)
    finally:
        await later.close()
    assert [a["doc"]["event"] for a in receiver.taken] == ["incident.closed"]


def test_events_of_each_step():
    assert events_for("take", "queued", "dispatched") == ["incident.dispatched"]
    assert events_for("arrived", "in_call", "in_call") == ["incident.arrived"]
    assert events_for("submit", "in_call", "awaiting_review") == ["incident.submitted"]
    assert events_for("review:evr_desk_enquiries", "awaiting_review", "evr_desk_enquiries") == [
        "incident.reviewed"]
    assert events_for("review:patrol_suspect", "awaiting_review", "patrol_suspect") == [
        "incident.reviewed", "incident.closed"]
    assert events_for("reject", "triage", "rejected") == ["incident.closed"]
    for quiet in (("queue", "triage", "queued"), ("phoned", "dispatched", "dispatched"),
                  ("crime_outcome", "finalised", "finalised"), ("call_closed", "finalised", "finalised")):
        assert events_for(*quiet) == []


def test_signature_and_backoff():
    body = canonical({"b": 1, "a": "é"})
    assert body == '{"a":"é","b":1}'.encode()
    assert signature("k" * 16, body) == "sha256=" + hmac.new(b"k" * 16, body, hashlib.sha256).hexdigest()
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff(100).total_seconds() == 15 * 60


@pytest.mark.parametrize("url, secret, problem", [
    ("ftp://cad.example/events", SECRET, "http or https"),
    ("https://user:pw@cad.example/events", SECRET, "user name"),
    ("https:///events", SECRET, "http or https"),
    ("https://cad.example/events", "", "webhook_secret"),
    ("https://cad.example/events", "short", "webhook_secret"),
])
def test_webhook_settings_are_checked(tmp_path, url, secret, problem):
    with pytest.raises(ValueError, match=problem):
        Settings.load(data_dir=tmp_path, environ={}, webhook_url=url, webhook_secret=secret)
