"""Guests (contract, "Guests, chat, screen share and location"): staff invite a carer,
an interpreter, an appropriate adult or a support worker; each gets a single-device
link of their own that works exactly like the victim's, and staff can end one guest's
link while the call goes on."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from conftest import PASSWORD, claim, eventually, link_path, origin_of
from sqlalchemy import select
from test_api import UPGRADE, assert_json_error, database_text_containing

from evr.db import AuditEntry, Guest
from evr.http import DB

INTERPRETER = {"role": "interpreter", "name": "Ana Kowalska", "language": "Polish"}


async def invite(officer: Any, cid: str, **body: Any) -> dict[str, Any]:
    response = await officer.post(f"/api/consultations/{cid}/guests", {**INTERPRETER, **body})
    assert response.status == 201, await response.text()
    return await response.json()


async def guests_of(officer: Any, cid: str) -> list[dict[str, Any]]:
    response = await officer.get(f"/api/consultations/{cid}/guests")
    assert response.status == 200, await response.text()
    return (await response.json())["guests"]


async def audit(server: Any, action: str) -> list[AuditEntry]:
    async with server.app[DB]() as db:
        return list(await db.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


async def sign_in_again(officer: Any, name: str = "alice") -> None:
    """After the clock ran past the session's life."""
    response = await officer.client.post("/api/login", json={"username": name, "password": PASSWORD})
    assert response.status == 200, await response.text()
    officer.csrf = (await response.json())["csrf_token"]


def socket_url(client: Any, path: str) -> str:
    return str(client.make_url(path + "/ws"))


async def test_an_invited_guest_gets_a_link_of_their_own_claimed_like_the_victims(link, new_client, server):
    opened = await link()
    invited = await invite(opened.officer, opened.id)
    assert invited["role"] == "interpreter" and invited["name"] == "Ana Kowalska" and invited["language"] == "Polish"
    assert invited["message"] is None  # no contact given: shown to copy only
    assert invited["join_url"].startswith(str(server.make_url("/j/")))
    path = link_path(invited["join_url"])
    assert path != opened.path
    # The victim's page, told whose link it is; opening it binds nothing.
    previewer, device, other = await new_client(), await new_client(), await new_client()
    for client in (previewer, device):
        page = await client.get(path)
        assert page.status == 200 and "Set-Cookie" not in page.headers
        assert '<body data-link-role="interpreter"' in await page.text()
    assert '<body data-link-role="victim"' in await (await opened.phone.get(opened.path)).text()
    assert (await guests_of(opened.officer, opened.id))[0]["status"] == "invited"
    # The first browser to claim it holds it; every other is refused.
    claimed = await claim(device, path)
    assert claimed.status == 200 and "evr_link=" in claimed.headers["Set-Cookie"]
    assert f"Path={path}" in claimed.headers["Set-Cookie"]
    assert (await claim(device, path)).status == 200
    for client in (previewer, other):
        refused = await claim(client, path)
        assert refused.status == 403
        assert_json_error(await refused.json(), "link_in_use")
        assert (await client.get(path)).status == 403
    assert (await device.get(path)).status == 200
    # The victim's link is untouched by the guest's.
    assert (await opened.phone.get(opened.path + "/uploads")).status == 200
    [listed] = await guests_of(opened.officer, opened.id)
    assert listed["id"] == invited["id"] and listed["status"] == "joined" and listed["connected"] is False
    assert listed["closed_at"] is None
    # Audit-logged with the role, never the name.
    [invited_entry] = await audit(server, "guest.invite")
    assert invited_entry.object == f"guest:{invited['id']}" and invited_entry.consultation_id == opened.id
    assert invited_entry.details["role"] == "interpreter" and invited_entry.details["language"] == "Polish"
    assert invited_entry.details["link_sent_by"] is None
    assert "Ana" not in repr(invited_entry.details)
    guest_claims = [e for e in await audit(server, "link.claim") if e.actor.startswith("guest:")]
    assert len(guest_claims) == 1 and guest_claims[0].actor == f"guest:{invited['id']}"
    assert guest_claims[0].role == "guest" and guest_claims[0].details == {"role": "interpreter"}
    assert len(await audit(server, "guest.list")) == 2


async def test_bad_invitations_are_refused_with_clear_errors(link, staff):
    opened = await link()
    officer, url = opened.officer, f"/api/consultations/{opened.id}/guests"
    for body, code in (
        ({"role": "offender"}, "invalid_role"),
        ({"role": None}, "invalid_role"),
        ({}, "invalid_role"),
        ({**INTERPRETER, "name": "x" * 201}, "invalid_name"),
        ({**INTERPRETER, "name": "two\nlines"}, "invalid_name"),
        ({**INTERPRETER, "name": 7}, "invalid_name"),
        ({**INTERPRETER, "language": "y" * 65}, "invalid_language"),
        ({**INTERPRETER, "phone": "not a phone"}, "invalid_phone"),
        ({**INTERPRETER, "email": "nobody"}, "invalid_email"),
        ({**INTERPRETER, "notify": "pigeon"}, "invalid_notify"),
        ({**INTERPRETER, "notify": {}}, "invalid_notify"),  # unhashable: was a 500
        ({**INTERPRETER, "notify": "sms"}, "missing_contact"),
        ({**INTERPRETER, "email": "a@example.org", "notify": "sms"}, "missing_contact"),
    ):
        response = await officer.post(url, body)
        assert response.status == 422, (body, await response.text())
        assert_json_error(await response.json(), code)
    not_an_object = await officer.post(url, ["interpreter"])
    assert not_an_object.status == 400
    # Staff of the consultation only, and only with the CSRF header.
    no_csrf = await officer.client.post(url, json=INTERPRETER)
    assert no_csrf.status == 403
    assert_json_error(await no_csrf.json(), "csrf")
    bob = await staff("bob")
    for response in (await bob.post(url, INTERPRETER), await bob.get(url)):
        assert response.status == 404
    records = await staff("rita", "records")
    assert (await records.post(url, INTERPRETER)).status == 403
    assert (await officer.post("/api/consultations/not-a-uuid/guests", INTERPRETER)).status == 404
    assert await guests_of(officer, opened.id) == []
    # A sergeant may invite to any call: they see every consultation.
    sarge = await staff("sarge", "sergeant")
    assert (await sarge.post(url, INTERPRETER)).status == 201


async def test_at_most_four_open_guests_at_once(link, clock):
    opened = await link()
    officer, url = opened.officer, f"/api/consultations/{opened.id}/guests"
    invited = [await invite(officer, opened.id, role=role, name=None, language=None)
               for role in ("carer", "interpreter", "appropriate_adult", "support_worker")]
    fifth = await officer.post(url, INTERPRETER)
    assert fifth.status == 409
    assert_json_error(await fifth.json(), "too_many_guests")
    # An ended link frees its place.
    closed = await officer.post(f"{url}/{invited[0]['id']}/close")
    assert closed.status == 200 and await closed.json() == {"id": invited[0]["id"], "status": "closed"}
    await invite(officer, opened.id)
    assert (await officer.post(url, INTERPRETER)).status == 409
    # So does a link never claimed in time.
    clock.advance(hours=48, seconds=1)
    await sign_in_again(officer)
    listed = await guests_of(officer, opened.id)
    assert [g["status"] for g in listed] == ["closed"] + ["expired"] * 4
    await invite(officer, opened.id)


async def test_a_guest_joins_the_call_and_staff_end_their_link_while_the_call_goes_on(
        link, new_client, server, call):
    opened = await link()
    invited = await invite(opened.officer, opened.id)
    path = link_path(invited["join_url"])
    device = await new_client()
    victim = call.client(opened.phone.session, opened.ws_url)
    guest = call.client(device.session, socket_url(device, path))
    await victim.connect()
    await guest.connect()  # claims the link first, as the page does
    assert (await guest.wait_for(lambda m: m["type"] == "config"))["ice_servers"] == []
    state = await guest.wait_for(lambda m: m["type"] == "state")
    assert state["status"] == "waiting"
    # Another browser may not open the guest's socket.
    intruder = await new_client()
    assert (await intruder.get(path + "/ws", headers=UPGRADE)).status == 403
    # The guest in the call: connected in the list.
    console = call.client(opened.officer.client.session, opened.officer.ws_url(opened.id))
    await console.join()
    await guest.join()

    async def connected() -> bool:
        return (await guests_of(opened.officer, opened.id))[0]["connected"]

    await eventually(connected, what="the guest connected")
    # Staff end the guest's link: their socket is told and closed; nobody else's.
    ended = await opened.officer.post(f"/api/consultations/{opened.id}/guests/{invited['id']}/close")
    assert ended.status == 200, await ended.text()
    await asyncio.wait_for(guest.closed.wait(), 5)
    assert guest.close_code == 4000
    assert any(m["type"] == "closed" for m in guest.messages)
    assert not victim.ws.closed and not console.ws.closed
    assert not any(m["type"] == "closed" for m in victim.messages + console.messages)
    assert (await opened.officer.consultation(opened.id))["status"] != "closed"
    # From now on the guest's link answers 410, page, claim and socket alike.
    page = await device.get(path)
    assert page.status == 410 and page.content_type == "text/html"
    assert (await claim(device, path)).status == 410
    refused = await device.get(path + "/ws", headers=UPGRADE)
    assert refused.status == 410
    assert_json_error(await refused.json(), "link_closed")
    [listed] = await guests_of(opened.officer, opened.id)
    assert listed["status"] == "closed" and listed["closed_at"] and listed["connected"] is False
    # Ending it again changes nothing; one audit entry.
    assert (await opened.officer.post(f"/api/consultations/{opened.id}/guests/{invited['id']}/close")).status == 200
    [entry] = await audit(server, "guest.close")
    assert entry.object == f"guest:{invited['id']}" and entry.details == {"role": "interpreter"}
    for gid in (str(uuid.uuid4()), "not-a-uuid"):
        assert (await opened.officer.post(f"/api/consultations/{opened.id}/guests/{gid}/close")).status == 404
    # The victim's link still works.
    assert (await opened.phone.get(opened.path)).status == 200


async def test_closing_the_consultation_closes_every_guests_link(link, new_client):
    opened = await link()
    claimed, unclaimed = await invite(opened.officer, opened.id), await invite(opened.officer, opened.id)
    device = await new_client()
    assert (await claim(device, link_path(claimed["join_url"]))).status == 200
    closed = await opened.officer.post(f"/api/consultations/{opened.id}/close")
    assert closed.status == 200
    for invited in (claimed, unclaimed):
        path = link_path(invited["join_url"])
        assert (await device.get(path)).status == 410
        assert (await claim(device, path)).status == 410
        assert (await device.get(path + "/ws", headers=UPGRADE)).status == 410
    listed = await guests_of(opened.officer, opened.id)
    assert [g["status"] for g in listed] == ["closed", "closed"] and all(g["closed_at"] for g in listed)
    late = await opened.officer.post(f"/api/consultations/{opened.id}/guests", INTERPRETER)
    assert late.status == 410
    assert_json_error(await late.json(), "closed")
    # The end screen's survey is the victim's: a guest is told so, and not counted as
    # guessing tokens (their page asking must not lock the address out).
    for _ in range(3):
        offer = await device.post(link_path(claimed["join_url"]) + "/survey", headers={"Origin": origin_of(device)})
        assert offer.status == 403
        assert_json_error(await offer.json(), "guest_not_allowed")
    assert (await device.get(link_path(claimed["join_url"]))).status == 410  # not 429


async def test_a_guest_may_not_use_the_victims_uploads_or_statements(link, new_client):
    opened = await link()
    path = link_path((await invite(opened.officer, opened.id))["join_url"])
    device = await new_client()
    tus = {"Tus-Resumable": "1.0.0", "Upload-Length": "10", "Origin": origin_of(device)}
    for claimed in (False, True):
        if claimed:
            assert (await claim(device, path)).status == 200
        for response in (await device.get(path + "/uploads"), await device.post(path + "/uploads", headers=tus),
                         await device.get(path + "/statements"),
                         await device.get(path + f"/statements/{uuid.uuid4()}")):
            assert response.status == 403, (claimed, response.url.path)
            assert_json_error(await response.json(), "guest_not_allowed")


async def test_a_guests_link_is_sent_through_the_outbox_and_kept_nowhere(link, server, caplog):
    opened = await link()
    with caplog.at_level(logging.INFO):  # the service's level (evr.logs.configure: aiosqlite's debug is off)
        invited = await invite(opened.officer, opened.id, phone="07700 900456")
        token = invited["join_url"].rsplit("/", 1)[1]
        device_path = link_path(invited["join_url"])
        assert (await claim(opened.phone, device_path)).status == 200
    assert len(token) >= 43  # 256 bits
    message = invited["message"]
    assert message["channel"] == "sms" and message["status"] == "outbox" and message["recipient"] == "07700 900456"
    assert invited["join_url"] in message["body"]
    kept = (await (await opened.officer.get(f"/api/outbox?consultation={opened.id}")).json())["messages"]
    guest_message = next(m for m in kept if m["recipient"] == "07700 900456")
    assert token not in guest_message["body"] and "/j/…" in guest_message["body"]
    [entry] = await audit(server, "guest.invite")
    assert entry.details["link_sent_by"] == "sms" and entry.details["collected"] == ["name", "phone"]
    assert "07700" not in repr(entry.details)
    # The token is in no table and no log record; nor are the guest's name and phone.
    assert await database_text_containing(server, token) == []
    async with server.app[DB]() as db:
        guest = await db.get(Guest, invited["id"])
    assert guest is not None and len(guest.token_hash) == 64
    assert any("guest invited" in r.getMessage() for r in caplog.records)
    assert any("link message outbox" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage()
        assert token not in text and "07700 900456" not in text and "Kowalska" not in text, text


async def test_a_guests_link_never_claimed_expires_and_a_claimed_one_does_not(link, new_client, clock):
    opened = await link()
    claimed, unclaimed = await invite(opened.officer, opened.id), await invite(opened.officer, opened.id)
    device = await new_client()
    assert (await claim(device, link_path(claimed["join_url"]))).status == 200
    clock.advance(hours=48, seconds=1)
    expired = await device.get(link_path(unclaimed["join_url"]))
    assert expired.status == 410 and "expired" in await expired.text()
    assert (await claim(device, link_path(unclaimed["join_url"]))).status == 410
    assert (await device.get(link_path(claimed["join_url"]))).status == 200
    await sign_in_again(opened.officer)
    listed = {g["id"]: g["status"] for g in await guests_of(opened.officer, opened.id)}
    assert listed == {claimed["id"]: "joined", unclaimed["id"]: "expired"}


async def test_unknown_tokens_are_still_counted_with_guests_links(link, new_client):
    opened = await link()
    await invite(opened.officer, opened.id)
    guesser = await new_client()
    for n in range(30):
        assert (await guesser.get(f"/j/guess-{n:04d}" + "x" * 32)).status == 404
    assert (await guesser.get("/j/guess-again" + "x" * 32)).status == 429


async def test_a_guest_socket_is_refused_cross_origin(link, new_client):
    opened = await link()
    path = link_path((await invite(opened.officer, opened.id))["join_url"])
    device = await new_client()
    assert (await claim(device, path)).status == 200
    cross = await device.get(path + "/ws", headers={**UPGRADE, "Origin": "https://evil.example"})
    assert cross.status == 403
    assert_json_error(await cross.json(), "cross_origin")
