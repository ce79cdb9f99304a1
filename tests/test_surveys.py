"""Victim surveys through the contract: an officer's single-use link for a closed call,
the survey page, the answers sent once (201, then 410), kept apart from the call, bad
answers refused with nothing kept, and the audit trail saying that, never what."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from evr.db import AuditEntry, SurveyAnswer, SurveyInvitation
from evr.http import DB


async def _closed_call(staff: Any) -> tuple[Any, str]:
    officer = await staff("olive", "officer")
    cid = (await officer.create())["id"]
    assert (await officer.post(f"/api/consultations/{cid}/close")).status == 200
    return officer, cid


async def _invite(officer: Any, cid: str) -> str:
    response = await officer.post(f"/api/consultations/{cid}/survey")
    assert response.status == 201, await response.text()
    url = (await response.json())["survey_url"]
    assert "/s/" in url
    return "/s/" + url.rsplit("/s/", 1)[1]


async def test_a_survey_is_answered_once_and_kept_apart_from_the_call(staff, new_client, server):
    officer, cid = await _closed_call(staff)
    path = await _invite(officer, cid)
    victim = await new_client()
    page = await victim.get(path)
    assert page.status == 200 and "How did we do?" in await page.text()
    answers = {"satisfied": 4, "would_use_again": True, "felt_safe": 5, "confidence_in_police": None}
    first = await victim.post(path, json={"answers": answers})
    assert first.status == 201, await first.text()
    again = await victim.post(path, json={"answers": {"satisfied": 1}})
    assert again.status == 410 and (await again.json())["error"]["code"] == "survey_answered"
    spent = await victim.get(path)
    assert spent.status == 410 and "answered already" in await spent.text()
    # A new link for the same call: refused, the victim has answered.
    refused = await officer.post(f"/api/consultations/{cid}/survey")
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "survey_answered"
    async with server.app[DB]() as db:
        [row] = list(await db.scalars(select(SurveyAnswer)))
        assert (row.satisfied, row.would_use_again, row.felt_safe, row.confidence_in_police) == (4, True, 5, None)
        assert not {c.name for c in SurveyAnswer.__table__.columns} & {"consultation_id", "invitation_id",
                                                                         "incident_id", "created_at"}
        [invitation] = list(await db.scalars(select(SurveyInvitation)))
        assert invitation.used and invitation.token_hash not in path
        entries = list(await db.scalars(select(AuditEntry).where(AuditEntry.action.like("survey.%"))
                                        .order_by(AuditEntry.id)))
    assert [e.action for e in entries] == ["survey.invite", "survey.answer"]
    assert all("satisfied" not in str(e.details) for e in entries)  # that they answered, never what


async def test_bad_answers_are_refused_and_keep_nothing(staff, new_client, server):
    officer, cid = await _closed_call(staff)
    path = await _invite(officer, cid)
    victim = await new_client()
    for body, code in [({"answers": {}}, "no_answers"), ({"answers": {"satisfied": 6}}, "invalid_answers"),
                       ({"answers": {"satisfied": True}}, "invalid_answers"),
                       ({"answers": {"would_use_again": "yes"}}, "invalid_answers"),
                       ({"answers": {"postcode": "AB1"}}, "invalid_answers"), ({"nothing": 1}, "invalid_answers"),
                       ([1, 2], "invalid_answers")]:
        response = await victim.post(path, json=body)
        assert response.status == 422 and (await response.json())["error"]["code"] == code, body
    malformed = await victim.post(path, data=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status == 400
    async with server.app[DB]() as db:
        assert list(await db.scalars(select(SurveyAnswer))) == []
    assert (await victim.post(path, json={"answers": {"felt_safe": 2}})).status == 201


async def test_unknown_links_open_calls_and_other_origins_are_refused(staff, new_client):
    officer = await staff("olive", "officer")
    cid = (await officer.create())["id"]
    open_call = await officer.post(f"/api/consultations/{cid}/survey")
    assert open_call.status == 409 and (await open_call.json())["error"]["code"] == "call_not_closed"
    victim = await new_client()
    unknown = await victim.post("/s/not-a-real-token", json={"answers": {"satisfied": 3}})
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "unknown_survey"
    page = await victim.get("/s/not-a-real-token")
    assert page.status == 404 and "does not match" in await page.text()
    assert (await officer.post(f"/api/consultations/{cid}/close")).status == 200
    path = await _invite(officer, cid)
    hostile = await victim.post(path, json={"answers": {"satisfied": 1}}, headers={"Origin": "https://evil.example"})
    assert hostile.status == 403
    # Only staff who may see the call make its survey.
    other = await staff("oscar", "officer")
    assert (await other.post(f"/api/consultations/{cid}/survey")).status == 404
    records = await staff("rita", "records")
    assert (await records.post(f"/api/consultations/{cid}/survey")).status == 403


async def test_an_expired_link_is_refused(staff, new_client, clock):
    officer, cid = await _closed_call(staff)
    path = await _invite(officer, cid)
    clock.advance(days=31)
    victim = await new_client()
    response = await victim.post(path, json={"answers": {"satisfied": 3}})
    assert response.status == 410 and (await response.json())["error"]["code"] == "survey_expired"


async def test_the_end_screen_offers_the_survey_to_the_browser_that_had_the_call(link, new_client, server, clock):
    c = await link()
    refused = await c.phone.post(f"{c.path}/survey", json={})
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "call_not_closed"
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200
    offered = await c.phone.post(f"{c.path}/survey", json={})
    assert offered.status == 201, await offered.text()
    path = "/s/" + (await offered.json())["survey_url"].rsplit("/s/", 1)[1]
    # Another browser holding the link gets nothing.
    stranger = await new_client()
    assert (await stranger.post(f"{c.path}/survey", json={})).status == 403
    assert (await c.phone.post(path, json={"answers": {"satisfied": 5}})).status == 201
    # Answered: the end screen offers nothing more.
    again = await c.phone.post(f"{c.path}/survey", json={})
    assert again.status == 409 and (await again.json())["error"]["code"] == "survey_answered"
    clock.advance(hours=25)
    late = await c.phone.post(f"{c.path}/survey", json={})
    assert late.status == 410
    async with server.app[DB]() as db:
        channels = [i.channel for i in await db.scalars(select(SurveyInvitation))]
    assert channels == ["end_screen"]


async def test_a_reminder_goes_once_after_the_delay_to_those_who_have_not_answered(staff, server, settings, clock):
    from evr.db import OutboxMessage
    from evr.http import SURVEYS

    surveys = server.app[SURVEYS]
    settings.session_ttl_hours = 24 * 365
    later = await staff("oz", "officer")  # signed in before public_url makes cookies https-only
    officer, quiet = await _closed_call(staff)
    answered_cid = (await officer.create())["id"]
    assert (await officer.post(f"/api/consultations/{answered_cid}/close")).status == 200
    victim_path = await _invite(officer, answered_cid)
    assert (await officer.client.post(victim_path, json={"answers": {"satisfied": 3}})).status == 201
    assert await surveys.remind_due() == 0  # no public_url: a link cannot be made
    settings.public_url = "https://evr.example"
    assert await surveys.remind_due() == 0  # not due yet
    clock.advance(days=10, minutes=1)
    assert await surveys.remind_due() == 1  # the quiet one only: the other answered
    assert await surveys.remind_due() == 0  # once
    async with server.app[DB]() as db:
        [message] = [m for m in await db.scalars(select(OutboxMessage)) if "/s/" in m.body]
        channels = sorted(i.channel for i in await db.scalars(select(SurveyInvitation)
                                                            .where(SurveyInvitation.consultation_id == quiet)))
    assert message.consultation_id == quiet and message.channel == "sms" and message.recipient == "07700 900123"
    assert "https://evr.example/s/…" in message.body and "video appointment" in message.body  # token kept out
    assert channels == ["sms"]
    # Long past the delay (a new server): no message for the calls of the past.
    other = (await later.create())["id"]
    assert (await later.post(f"/api/consultations/{other}/close")).status == 200
    clock.advance(days=14)
    assert await surveys.remind_due() == 0


async def test_guessing_survey_links_is_throttled_like_call_links(new_client):
    guesser = await new_client()
    for n in range(30):
        assert (await guesser.post(f"/s/guess-{n:04d}" + "x" * 32, json={"answers": {"satisfied": 3}})).status == 404
    page = await guesser.get("/s/guess-again" + "x" * 32)
    assert page.status == 429 and page.content_type == "text/html" and "Retry-After" in page.headers
    api = await guesser.post("/s/guess-api" + "x" * 32, json={"answers": {"satisfied": 3}})
    assert api.status == 429 and (await api.json())["error"]["code"] == "too_many_unknown_links"
    offer = await guesser.post("/j/guess-offer" + "x" * 32 + "/survey", json={})
    assert offer.status == 429 and (await offer.json())["error"]["code"] == "too_many_unknown_links"
