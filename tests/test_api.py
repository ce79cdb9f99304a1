"""Staff authentication, consultations and links through the HTTP contract."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import ELIGIBLE, PASSWORD, claim, link_path, origin_of
from sqlalchemy import select

from evr.db import AuditEntry
from evr.http import CONSULTATIONS, DB

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture
def link_created(staff: Any) -> Any:
    """A new consultation's link path, not yet opened by anyone."""
    async def make() -> str:
        officer = await staff()
        return link_path((await officer.create())["join_url"])

    return make


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

    from evr.db import Consultation
    from evr.http import DB

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


# -- the victim's link: opening binds nothing, the page's first button claims it ------


def assert_json_error(body: Any, code: str) -> None:
    assert body["error"]["code"] == code, body


async def test_opening_the_link_binds_nothing_and_the_first_claim_wins(staff, new_client):
    alice = await staff()
    path = link_path((await alice.create())["join_url"])
    # Scanners and previews fetch the link, as often as they like, from anywhere.
    previewers = [await new_client() for _ in range(3)]
    for previewer in previewers:
        for _ in range(2):
            page = await previewer.get(path)
            assert page.status == 200 and "Set-Cookie" not in page.headers
            assert page.headers["Cache-Control"] == "no-store"
            assert page.headers["Referrer-Policy"] == "no-referrer"
            assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
            head = await previewer.head(path)
            assert head.status == 200 and "Set-Cookie" not in head.headers
    # The victim's page claims it at the first button: the binding cookie, for this path only.
    phone = await new_client()
    assert (await phone.get(path)).status == 200
    claimed = await claim(phone, path)
    assert claimed.status == 200 and (await claimed.json()) == {"status": "waiting"}
    cookie = claimed.headers["Set-Cookie"]
    assert "evr_link=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and f"Path={path}" in cookie
    assert claimed.headers["Cache-Control"] == "no-store"
    again = await claim(phone, path)  # the same browser again (a rejoin, a second tab)
    assert again.status == 200 and "Set-Cookie" not in again.headers
    assert (await phone.get(path)).status == 200
    # Everyone else, previewers included, is now refused: the page says so, the API in JSON.
    for other in previewers:
        refused = await claim(other, path)
        assert refused.status == 403
        assert_json_error(await refused.json(), "link_in_use")
        page = await other.get(path)
        assert page.status == 403 and "another device" in await page.text()
        assert (await other.head(path)).status == 403


async def test_a_claim_needs_the_pages_own_origin(link_created, new_client):
    path = await link_created()
    phone = await new_client()
    missing = await phone.post(path + "/claim")
    assert missing.status == 403 and "Set-Cookie" not in missing.headers
    assert_json_error(await missing.json(), "cross_origin")
    for origin in ("https://evil.example", "null", "http://evil.example"):
        cross = await phone.post(path + "/claim", headers={"Origin": origin})
        assert cross.status == 403 and "Set-Cookie" not in cross.headers, origin
    # Nothing was bound by the refusals: the page's own claim still works.
    assert (await claim(phone, path)).status == 200


async def test_of_ten_browsers_claiming_at_once_exactly_one_wins(link_created, new_client, server):
    path = await link_created()
    browsers = [await new_client() for _ in range(10)]
    answers = await asyncio.gather(*(claim(b, path) for b in browsers))
    assert sorted(a.status for a in answers) == [200] + [403] * 9
    winner = browsers[[a.status for a in answers].index(200)]
    assert (await winner.get(path + "/uploads")).status == 200
    for loser in (b for b, a in zip(browsers, answers) if a.status == 403):
        assert (await loser.get(path)).status == 403
    async with server.app[DB]() as db:
        claims = list(await db.scalars(select(AuditEntry).where(AuditEntry.action == "link.claim")))
    assert len(claims) == 1 and claims[0].actor == "victim"


async def test_every_other_link_resource_needs_the_claim(link_created, new_client):
    path = await link_created()
    phone = await new_client()
    assert (await phone.get(path)).status == 200  # the page, but nothing behind it
    uploads = await phone.get(path + "/uploads")
    assert uploads.status == 403
    assert_json_error(await uploads.json(), "link_not_claimed")
    statements = await phone.get(path + "/statements")
    assert statements.status == 403
    assert_json_error(await statements.json(), "link_not_claimed")
    assert (await phone.get(path + "/ws", headers=UPGRADE)).status == 403


async def test_unknown_links_are_404_and_the_claim_answers_json(new_client):
    client = await new_client()
    page = await client.get("/j/" + "A" * 43)
    assert page.status == 404 and page.content_type == "text/html"
    claimed = await claim(client, "/j/" + "A" * 43)
    assert claimed.status == 404
    assert_json_error(await claimed.json(), "unknown_link")


async def test_a_never_claimed_link_expires_even_when_opened(link_created, new_client, clock):
    path = await link_created()
    previewer = await new_client()
    assert (await previewer.get(path)).status == 200  # opened, not claimed
    clock.advance(hours=48, seconds=1)
    for client in (previewer, await new_client()):
        response = await client.get(path)
        assert response.status == 410 and "expired" in await response.text()
        late = await claim(client, path)
        assert late.status == 410
        assert_json_error(await late.json(), "link_closed")


async def test_a_claimed_link_does_not_expire_while_open(link_created, new_client, clock):
    path = await link_created()
    phone = await new_client()
    assert (await claim(phone, path)).status == 200
    clock.advance(hours=72)
    assert (await phone.get(path)).status == 200
    assert (await claim(phone, path)).status == 200


async def test_closed_link_is_410_forever(staff, new_client):
    alice = await staff()
    created = await alice.create()
    phone = await new_client()
    path = link_path(created["join_url"])
    assert (await claim(phone, path)).status == 200
    closed = await alice.post(f"/api/consultations/{created['id']}/close")
    assert closed.status == 200 and (await closed.json())["status"] == "closed"
    assert (await phone.get(path)).status == 410
    assert (await (await new_client()).get(path)).status == 410
    for client in (phone, await new_client()):
        refused = await claim(client, path)
        assert refused.status == 410
        assert_json_error(await refused.json(), "link_closed")
    again = await alice.post(f"/api/consultations/{created['id']}/close")
    assert again.status == 200
    detail = await alice.consultation(created["id"])
    assert detail["status"] == "closed" and detail["closed_at"]


async def test_apis_under_a_link_answer_json_errors_and_the_pages_stay_html(link, server, monkeypatch):
    opened = await link()
    missing = await opened.phone.get(opened.path + "/no-such-thing")
    assert missing.status == 404 and missing.content_type == "application/json"
    assert_json_error(await missing.json(), "not_found")
    wrong_method = await opened.phone.put(opened.path + "/claim")
    assert wrong_method.status == 405 and wrong_method.content_type == "application/json"
    assert_json_error(await wrong_method.json(), "method_not_allowed")

    async def broken(*_args: Any) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(server.app[CONSULTATIONS], "by_token", broken)
    for api in ("/uploads", "/statements", "/claim"):
        method = opened.phone.post if api == "/claim" else opened.phone.get
        failed = await method(opened.path + api, headers={"Origin": origin_of(opened.phone)})
        assert failed.status == 500 and failed.content_type == "application/json", api
        assert_json_error(await failed.json(), "internal_error")
    page = await opened.phone.get(opened.path)
    assert page.status == 500 and page.content_type == "text/html"


async def test_unknown_tokens_are_throttled_per_address_and_logged_once(link_created, new_client, server, caplog):
    path = await link_created()
    guesser = await new_client()
    with caplog.at_level(logging.DEBUG):
        for n in range(30):
            unknown = await guesser.get(f"/j/guess-{n:04d}" + "x" * 32)
            assert unknown.status == 404, n
        throttled = await guesser.get("/j/guess-again" + "x" * 32)
        assert throttled.status == 429 and throttled.content_type == "text/html"
        assert 1 <= int(throttled.headers["Retry-After"]) <= 61
        assert "call 101" in await throttled.text()
        api = await claim(guesser, "/j/guess-api" + "x" * 32)
        assert api.status == 429 and "Retry-After" in api.headers
        assert_json_error(await api.json(), "too_many_unknown_links")
        # Another address is not held up: a real link works from it.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with TestClient(server, connector=connector) as phone:
            assert (await phone.get(path)).status == 200
            assert (await claim(phone, path)).status == 200
            assert (await phone.get(path + "/uploads")).status == 200
    warnings = [r for r in caplog.records if r.name == "evr.links" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


# -- the outbox: no raw link at rest, and only for the officer who created it ----------


async def test_the_link_is_shown_once_to_its_creator_and_kept_nowhere(staff, server, caplog):
    alice = await staff()
    sarge = await staff("sarge", "sergeant")
    admin = await staff("root", "admin")
    with caplog.at_level(logging.INFO):
        created = await alice.create()
    token = created["join_url"].rsplit("/", 1)[1]
    # The create answer is the one place the link is shown: the officer reads or copies it.
    message = created["message"]
    assert message["channel"] == "sms" and message["status"] == "outbox"
    assert created["join_url"] in message["body"]
    assert "CAD" not in message["body"] and "police" not in message["body"].lower()
    # The outbox keeps the message without the token; the creator still sees what went where.
    kept = (await (await alice.get(f"/api/outbox?consultation={created['id']}")).json())["messages"]
    assert len(kept) == 1 and kept[0]["recipient"] == "07700 900123" and kept[0]["status"] == "outbox"
    assert token not in kept[0]["body"] and "/j/…" in kept[0]["body"]
    # Nobody else sees the message at all, sergeants and admins included.
    for other in (sarge, admin):
        for query in ("", f"?consultation={created['id']}"):
            response = await other.get("/api/outbox" + query)
            assert response.status == 200 and (await response.json())["messages"] == []
    # Not in any table, not in any log record.
    assert await database_text_containing(server, token) == []
    assert any("link message outbox" in r.getMessage() for r in caplog.records)
    assert all(token not in r.getMessage() and "07700" not in r.getMessage() for r in caplog.records)


async def database_text_containing(server: Any, needle: str) -> list[str]:
    """Names of the tables where ``needle`` appears in any column of any row."""
    from sqlalchemy import inspect
    from sqlalchemy import text as sql

    found = []
    async with server.app[DB]() as db:
        names = await (await db.connection()).run_sync(lambda c: inspect(c).get_table_names())
        assert "outbox" in names and "consultations" in names and "audit_log" in names
        for name in names:
            rows = (await db.execute(sql(f'SELECT * FROM "{name}"'))).all()
            if needle in repr(rows):
                found.append(name)
    return found


# -- create, close and join commit with their audit entries, or not at all ----------


async def counts(server: Any) -> dict[str, int]:
    from sqlalchemy import func

    from evr.db import Consultation, OutboxMessage

    async with server.app[DB]() as db:
        return {
            "consultations": await db.scalar(select(func.count()).select_from(Consultation)),
            "outbox": await db.scalar(select(func.count()).select_from(OutboxMessage)),
            "audit": await db.scalar(select(func.count()).select_from(AuditEntry)),
        }


async def test_create_commits_nothing_when_its_audit_entry_fails(staff, server, audit_fails):
    alice = await staff()
    before = await counts(server)
    audit_fails()
    body = {"cad_ref": "CAD-2026-000123", "victim": {"phone": "07700 900123"}, "eligibility": ELIGIBLE}
    response = await alice.post("/api/consultations", body)
    assert response.status == 500
    assert await counts(server) == before


async def test_close_commits_nothing_when_its_audit_entry_fails(staff, server, audit_fails, new_client):
    alice = await staff()
    created = await alice.create()
    audit_fails()
    response = await alice.post(f"/api/consultations/{created['id']}/close")
    assert response.status == 500
    from evr.db import Consultation

    async with server.app[DB]() as db:  # (the API's views are audited, and the audit still fails)
        row = await db.get(Consultation, created["id"])
    assert row.status == "waiting" and row.closed_at is None and row.closed_by is None
    phone = await new_client()
    assert (await phone.get(link_path(created["join_url"]))).status == 200  # the link still works


async def test_a_claim_and_an_arrival_commit_nothing_when_their_audit_entry_fails(
        staff, server, audit_fails, new_client):
    from evr.db import Consultation, ConsultationStaff

    alice = await staff()
    created = await alice.create()
    path = link_path(created["join_url"])
    audit_fails()
    phone = await new_client()
    assert (await claim(phone, path)).status == 500
    joined = await alice.get(f"/api/consultations/{created['id']}/ws")
    assert joined.status == 500
    async with server.app[DB]() as db:
        row = await db.get(Consultation, created["id"])
        assert row.binding_hash is None and row.bound_at is None and row.arrived_at is None
        assert list(await db.scalars(select(ConsultationStaff))) == []


async def test_a_lone_surrogate_in_a_create_body_is_422_and_creates_nothing(staff, server):
    alice = await staff()
    before = await counts(server)
    for field in ('"cad_ref": "CAD-\\ud800"', '"cad_ref": "CAD-1", "victim": {"name": "\\udfff"}'):
        body = '{' + field + ', "eligibility": ' + json.dumps(ELIGIBLE) + '}'
        response = await alice.client.post("/api/consultations", data=body,
                                           headers={**alice.headers(), "Content-Type": "application/json"})
        assert response.status == 422, body
        assert_json_error(await response.json(), "unencodable_text")
    assert await counts(server) == before


async def test_passwords_never_reach_the_log(staff, caplog):
    with caplog.at_level(logging.DEBUG):
        await staff()
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


async def test_the_upgrade_takes_tokens_out_of_messages_kept_before(db_url):
    """Outbox messages written before 0010 carried the raw link: the migration redacts them."""
    from datetime import datetime, timezone

    from alembic import command
    from sqlalchemy import text as sql

    from evr.db import alembic_config, make_engine, migrate

    token = "kQ3" * 15
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0001"))
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            await conn.execute(sql("INSERT INTO users (id, username, password_hash, role, created_at, disabled) "
                                   "VALUES (1, 'alice', 'x', 'officer', :now, false)"), {"now": now})
            await conn.execute(sql(
                "INSERT INTO consultations (id, cad_ref, status, created_by, created_at, victim, eligibility, "
                "token_hash, expires_at) VALUES ('c1', 'CAD-1', 'waiting', 1, :now, '{}', '{}', :h, :now)"),
                {"now": now, "h": "0" * 64})
            await conn.execute(sql(
                "INSERT INTO outbox (consultation_id, channel, recipient, body, created_at, status, provider) "
                "VALUES ('c1', 'sms', '07700 900123', :body, :now, 'outbox', 'outbox')"),
                {"body": f"Open this link to join: https://evr.example/j/{token}\nIn an emergency call 999.",
                 "now": now})
        await migrate(engine)
        async with engine.connect() as conn:
            body = (await conn.execute(sql("SELECT body FROM outbox"))).scalar_one()
    finally:
        await engine.dispose()
    assert body == "Open this link to join: https://evr.example/j/…\nIn an emergency call 999."
