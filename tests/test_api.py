"""Staff authentication, consultations and links through the HTTP contract."""

from __future__ import annotations

import logging
import re

import pytest

from conftest import ELIGIBLE, PASSWORD, link_path


async def test_login_sets_strict_http_only_cookie_and_returns_csrf(staff, new_client, users):
    await users("bob", "sergeant")
    client = await new_client()
    response = await client.post("/api/login", json={"username": "bob", "password": PASSWORD})
    assert response.status == 200
    body = await response.json()
    assert body["username"] == "bob" and body["role"] == "sergeant" and len(body["csrf_token"]) >= 32
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    me = await client.get("/api/me")
    assert (await me.json())["username"] == "bob"


async def test_wrong_password_and_unknown_user_get_the_same_401(new_client, users):
    await users("carol")
    client = await new_client()
    wrong = await client.post("/api/login", json={"username": "carol", "password": "nope-nope-nope"})
    unknown = await client.post("/api/login", json={"username": "nobody", "password": "nope-nope-nope"})
    assert wrong.status == unknown.status == 401
    assert (await wrong.json()) == (await unknown.json())


@pytest.mark.parametrize("body", ["{broken", "[]", '{"username": "x"}', '{"username": 1, "password": 2}'])
async def test_a_malformed_login_is_400(new_client, body):
    client = await new_client()
    response = await client.post("/api/login", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400 and "error" in await response.json()


async def test_repeated_failures_lock_the_name_even_with_the_right_password(new_client, users, clock):
    await users("dave")
    client = await new_client()
    for _ in range(5):
        r = await client.post("/api/login", json={"username": "dave", "password": "wrong-password"})
        assert r.status == 401
    locked = await client.post("/api/login", json={"username": "dave", "password": PASSWORD})
    assert locked.status == 429
    assert (await locked.json())["error"]["code"] == "locked"
    clock.advance(minutes=16)
    assert (await client.post("/api/login", json={"username": "dave", "password": PASSWORD})).status == 200


async def test_logout_ends_the_session(staff):
    alice = await staff()
    assert (await alice.post("/api/logout")).status == 200
    assert (await alice.get("/api/consultations")).status == 401


async def test_missing_or_wrong_csrf_header_is_403(staff):
    alice = await staff()
    body = {"cad_ref": "CAD-1", "eligibility": ELIGIBLE}
    missing = await alice.client.post("/api/consultations", json=body)
    wrong = await alice.client.post("/api/consultations", json=body, headers={"X-CSRF-Token": "guess"})
    assert missing.status == wrong.status == 403
    assert (await missing.json())["error"]["code"] == "csrf"


async def test_create_returns_an_absolute_join_url_and_a_long_random_token(staff):
    alice = await staff()
    created = await alice.create()
    assert created["status"] == "waiting" and created["cad_ref"] == "CAD-2026-000123"
    assert re.match(r"^http://127\.0\.0\.1:\d+/j/[A-Za-z0-9_-]{43,}$", created["join_url"])
    assert created["expires_at"].endswith("Z")


async def test_the_token_is_stored_only_as_a_hash(staff, server):
    from sqlalchemy import select

    from evr.app import DB
    from evr.db import Consultation

    alice = await staff()
    created = await alice.create()
    token = created["join_url"].rsplit("/", 1)[1]
    async with server.app[DB]() as db:
        row = await db.scalar(select(Consultation).where(Consultation.id == created["id"]))
    assert token not in repr(row.__dict__)
    assert len(row.token_hash) == 64


@pytest.mark.parametrize("missing", ["adult_or_carer_present", "offender_absent", "safe_location", "consent"])
async def test_each_failing_eligibility_answer_is_named_in_a_422(staff, missing):
    alice = await staff()
    answers = {**ELIGIBLE, missing: False}
    response = await alice.post("/api/consultations", {"cad_ref": "CAD-9", "eligibility": answers})
    assert response.status == 422
    error = (await response.json())["error"]
    assert missing in error["message"] and error["fields"] == [missing]
    del answers[missing]
    response = await alice.post("/api/consultations", {"cad_ref": "CAD-9", "eligibility": answers})
    assert response.status == 422 and missing in (await response.json())["error"]["message"]


async def test_malformed_json_and_wrong_shapes_are_400_not_500(staff):
    alice = await staff()
    response = await alice.client.post("/api/consultations", data="{not json", headers=alice.headers())
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "malformed_json"
    response = await alice.post("/api/consultations", [1, 2])
    assert response.status == 400
    response = await alice.client.post("/api/consultations", data="x" * 200_000, headers=alice.headers())
    assert response.status == 413 and "error" in await response.json()
    response = await alice.get("/api/nothing-here")
    assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"


async def test_officers_see_their_own_sergeants_see_all_records_may_not_create(staff):
    alice = await staff("alice", "officer")
    bob = await staff("bob", "officer")
    sarge = await staff("sarge", "sergeant")
    rita = await staff("rita", "records")
    mine = await alice.create()
    assert [c["id"] for c in (await (await alice.get("/api/consultations")).json())["consultations"]] == [mine["id"]]
    assert (await (await bob.get("/api/consultations")).json())["consultations"] == []
    assert (await bob.get(f"/api/consultations/{mine['id']}")).status == 404
    assert (await bob.post(f"/api/consultations/{mine['id']}/close")).status == 404
    assert (await sarge.get(f"/api/consultations/{mine['id']}")).status == 200
    response = await rita.post("/api/consultations", {"cad_ref": "CAD-1", "eligibility": ELIGIBLE})
    assert response.status == 403
    assert (await (await rita.get("/api/consultations")).json())["consultations"] == []


async def test_unauthenticated_api_calls_are_401(new_client):
    client = await new_client()
    assert (await client.get("/api/consultations")).status == 401


async def test_first_open_binds_the_link_and_another_browser_gets_403(staff, new_client):
    alice = await staff()
    path = link_path((await alice.create())["join_url"])
    phone, other = await new_client(), await new_client()
    first = await phone.get(path)
    assert first.status == 200
    assert first.headers["Cache-Control"] == "no-store"
    assert first.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in first.headers["Content-Security-Policy"]
    assert (await phone.get(path)).status == 200  # the same browser may come back
    refused = await other.get(path)
    assert refused.status == 403
    assert "another device" in await refused.text()


async def test_unknown_link_is_404(new_client):
    client = await new_client()
    assert (await client.get("/j/" + "A" * 43)).status == 404


async def test_a_never_opened_link_expires(staff, new_client, clock):
    alice = await staff()
    path = link_path((await alice.create())["join_url"])
    clock.advance(hours=48, seconds=1)
    response = await (await new_client()).get(path)
    assert response.status == 410
    assert "expired" in await response.text()


async def test_an_opened_link_does_not_expire_while_open(staff, new_client, clock):
    alice = await staff()
    path = link_path((await alice.create())["join_url"])
    phone = await new_client()
    assert (await phone.get(path)).status == 200
    clock.advance(hours=72)
    assert (await phone.get(path)).status == 200


async def test_closed_link_is_410_forever(staff, new_client):
    alice = await staff()
    created = await alice.create()
    phone = await new_client()
    path = link_path(created["join_url"])
    assert (await phone.get(path)).status == 200
    closed = await alice.post(f"/api/consultations/{created['id']}/close")
    assert closed.status == 200 and (await closed.json())["status"] == "closed"
    assert (await phone.get(path)).status == 410
    assert (await (await new_client()).get(path)).status == 410
    again = await alice.post(f"/api/consultations/{created['id']}/close")
    assert again.status == 200
    detail = await alice.consultation(created["id"])
    assert detail["status"] == "closed" and detail["closed_at"]


async def test_outbox_holds_the_neutral_message_and_the_log_never_the_token(staff, caplog):
    alice = await staff()
    with caplog.at_level(logging.INFO):
        created = await alice.create()
    token = created["join_url"].rsplit("/", 1)[1]
    response = await alice.get(f"/api/outbox?consultation={created['id']}")
    messages = (await response.json())["messages"]
    assert len(messages) == 1
    message = messages[0]
    assert message["channel"] == "sms" and message["status"] == "outbox"
    assert created["join_url"] in message["body"]
    assert "CAD" not in message["body"] and "police" not in message["body"].lower()
    assert any("link message outbox" in r.getMessage() for r in caplog.records)
    assert all(token not in r.getMessage() and "07700" not in r.getMessage() for r in caplog.records)


async def test_passwords_never_reach_the_log(staff, caplog):
    with caplog.at_level(logging.DEBUG):
        await staff()
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
