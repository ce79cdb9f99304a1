"""Staff accounts under attack: parallel guessing, guessing across names from one
address, login CSRF, the whole Origin, reserved names, races on sessions and headers
that are not text."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient, TestServer
from conftest import PASSWORD
from sqlalchemy import func, select

from evr import auth
from evr.app import create_app
from evr.auth import add_user
from evr.config import Settings
from evr.db import LoginFailure, StaffSession
from evr.http import DB


async def login(client: TestClient, name: str, password: str = PASSWORD, **kwargs: Any) -> Any:
    return await client.post("/api/login", json={"username": name, "password": password}, **kwargs)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 verification the server runs (the password checked is not kept)."""
    seen: list[str] = []
    real = auth.verify_password

    def counting(password_hash: str, password: str) -> bool:
        seen.append("verify")
        return real(password_hash, password)

    monkeypatch.setattr(auth, "verify_password", counting)
    return seen


# -- finding 4: parallel guessing ------------------------------------------------------


async def test_forty_parallel_wrong_passwords_lock_the_name_and_never_500(new_client, users, clock, verifications):
    await users("dave")
    client = await new_client()
    answers = await asyncio.gather(*(login(client, "dave", f"wrong-password-{i}") for i in range(40)))
    statuses = [a.status for a in answers]
    assert set(statuses) <= {401, 429}, statuses
    # No more guesses are checked than a lockout allows, however many arrive at once.
    assert statuses.count(401) <= 5 and len(verifications) <= 5, (statuses, verifications)
    for answer in answers:
        assert "error" in await answer.json()
    locked = await login(client, "dave")
    assert locked.status == 429 and (await locked.json())["error"]["code"] == "locked"
    assert len(verifications) <= 5  # refused before argon2 runs
    clock.advance(minutes=14)
    assert (await login(client, "dave")).status == 429
    clock.advance(minutes=2)
    assert (await login(client, "dave")).status == 200
    # A success clears the name's failures.
    async with client.server.app[DB]() as db:
        assert await db.get(LoginFailure, "dave") is None


async def test_a_locked_name_is_refused_without_checking_the_password(new_client, users, verifications):
    await users("erin")
    client = await new_client()
    for _ in range(5):
        assert (await login(client, "erin", "wrong-password")).status == 401
    checked = len(verifications)
    for _ in range(3):
        assert (await login(client, "erin", "wrong-password")).status == 429
    assert len(verifications) == checked


@pytest.fixture
def address_limit(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> int:
    """A smaller per-address limit, so a test need not make twenty logins."""
    monkeypatch.setattr(settings, "login_address_max_failures", 6)
    return 6


async def test_failures_from_one_address_across_many_names_are_throttled(new_client, users, clock, verifications,
                                                                         address_limit):
    await users("frank")
    client = await new_client()
    for i in range(address_limit):
        response = await login(client, f"guess-{i}", "wrong-password")
        assert response.status == 401, await response.text()
    throttled = await login(client, "frank")  # even the right password, from this address
    assert throttled.status == 429
    assert (await throttled.json())["error"]["code"] == "throttled"
    assert len(verifications) == address_limit  # refused before argon2 runs
    clock.advance(minutes=16)
    assert (await login(client, "frank")).status == 200


async def test_parallel_guesses_across_names_are_bounded_per_address(new_client, verifications, address_limit):
    client = await new_client()
    answers = await asyncio.gather(*(login(client, f"name-{i}", "wrong-password") for i in range(20)))
    statuses = [a.status for a in answers]
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) <= address_limit and statuses.count(429) >= 20 - address_limit
    assert len(verifications) <= address_limit


async def test_a_successful_login_does_not_count_against_the_address(new_client, users, address_limit):
    await users("gina")
    client = await new_client()
    for _ in range(address_limit + 3):
        assert (await login(client, "gina")).status == 200
    for i in range(address_limit):
        assert (await login(client, f"guess-{i}", "wrong-password")).status == 401
    assert (await login(client, "gina")).status == 429


async def test_ended_windows_and_locks_are_forgotten(new_client, users, clock, server):
    from evr.db import LoginThrottle

    await users("kim")
    client = await new_client()
    for _ in range(5):
        assert (await login(client, "kim", "wrong-password")).status == 401
    assert (await login(client, "nobody-1", "wrong-password")).status == 401
    clock.advance(minutes=16)
    assert (await login(client, "nobody-2", "wrong-password")).status == 401
    async with server.app[DB]() as db:
        names = set(await db.scalars(select(LoginFailure.username)))
        windows = list(await db.scalars(select(LoginThrottle.window_start)))
    assert names == {"nobody-1", "nobody-2"}  # kim's lock ended: nothing left to decide
    assert len(windows) == 1 and windows[0] > clock() - timedelta(minutes=1)
    assert (await login(client, "kim")).status == 200


@pytest.mark.parametrize("name", ["x" * 65, " padded", "", "tab\tname"])
async def test_a_name_no_user_can_have_is_a_plain_401(new_client, name):
    client = await new_client()
    response = await login(client, name, "wrong-password")
    assert response.status == 401 and (await response.json())["error"]["code"] == "bad_credentials"


async def test_a_nul_in_a_login_is_refused_as_text_no_database_keeps(new_client):
    """PostgreSQL refuses NUL in text (it was a 500): refused with every body's NUL."""
    client = await new_client()
    response = await login(client, "nul\u0000name", "wrong-password")
    assert response.status == 422 and (await response.json())["error"]["code"] == "unencodable_text"


# -- finding 14: login CSRF and the whole Origin ----------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
async def test_login_accepts_only_json(new_client, users, content_type):
    await users("hal")
    client = await new_client()
    body = b'{"username": "hal", "password": "%s"}' % PASSWORD.encode()
    headers = {"Content-Type": content_type} if content_type else {}
    if content_type is None:
        headers["Content-Type"] = ""
    response = await client.post("/api/login", data=body, headers=headers)
    assert response.status == 415
    assert (await response.json())["error"]["code"] == "unsupported_media_type"
    assert "Set-Cookie" not in response.headers
    ok = await client.post("/api/login", data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status == 200


async def test_login_from_another_origin_is_refused(new_client, users):
    await users("ivy")
    client = await new_client()
    own = f"http://{client.host}:{client.port}"
    for origin in ("https://evil.example", f"https://{client.host}:{client.port}", "null",
                   f"http://{client.host}:{client.port + 1}", f"http://{client.host}:{client.port}/path"):
        refused = await login(client, "ivy", headers={"Origin": origin})
        assert refused.status == 403, origin
        assert (await refused.json())["error"]["code"] == "cross_origin"
    assert (await login(client, "ivy", headers={"Origin": own})).status == 200
    assert (await login(client, "ivy")).status == 200  # not a browser: no Origin


@pytest.fixture
async def public_server(tmp_path: Any, db_url: str, clock: Any) -> Any:
    settings = Settings.load(data_dir=tmp_path / "public", environ={}, database_url=db_url,
                             login_failure_delay=0.01, public_url="https://evr.force.example")
    server = TestServer(create_app(settings, clock=clock))
    await server.start_server()
    async with server.app[DB]() as db:
        await add_user(db, "jo", "officer", PASSWORD, clock)
    client = TestClient(server)
    await client.start_server()
    yield client
    await client.close()
    await server.close()


async def test_with_public_url_only_its_whole_origin_is_accepted(public_server):
    client = public_server
    for origin in ("http://evr.force.example", "https://evr.force.example:8443",
                   f"http://{client.host}:{client.port}", "https://evil.example"):
        response = await login(client, "jo", headers={"Origin": origin})
        assert response.status == 403, origin
    for origin in ("https://evr.force.example", "https://EVR.force.example:443"):
        assert (await login(client, "jo", headers={"Origin": origin})).status == 200, origin


async def test_a_staff_socket_from_another_scheme_is_refused(staff):
    alice = await staff()
    created = await alice.create()
    url = alice.ws_url(created["id"])
    wrong_scheme = f"https://{alice.client.host}:{alice.client.port}"
    with pytest.raises(WSServerHandshakeError) as refused:
        await alice.client.session.ws_connect(url, headers={"Origin": wrong_scheme})
    assert refused.value.status == 403
    ws = await alice.client.session.ws_connect(url, headers={"Origin": f"http://{alice.client.host}:{alice.client.port}"})
    await ws.close()


# -- finding 15: reserved names, and the role without powers -----------------------------


@pytest.mark.parametrize("name", ["victim", "System", "VICTIM", "ｓｙｓｔｅｍ"])
async def test_reserved_names_cannot_be_users(server, name):
    async with server.app[DB]() as db:
        with pytest.raises(ValueError, match="reserved"):
            await add_user(db, name, "officer", PASSWORD, lambda: datetime.now(timezone.utc))


async def test_a_call_handler_has_no_powers_yet(staff):
    alice = await staff()
    created = await alice.create()
    handler = await staff("carl", "call_handler")
    assert (await (await handler.get("/api/consultations")).json())["consultations"] == []
    assert (await handler.get(f"/api/consultations/{created['id']}")).status == 404
    assert (await handler.post("/api/consultations", {"cad_ref": "CAD-1"})).status == 403
    assert (await handler.get(f"/api/consultations/{created['id']}/uploads")).status in (403, 404)
    assert (await handler.get("/api/audit")).status == 403
    assert (await handler.get("/api/retention/due")).status == 403


# -- siblings: races and headers that are not text ----------------------------------------


async def test_an_expired_session_used_by_parallel_requests_is_a_401_each(staff, clock, server):
    alice = await staff()
    clock.advance(hours=13)
    answers = await asyncio.gather(*(alice.get("/api/me") for _ in range(10)))
    assert [a.status for a in answers] == [401] * 10
    async with server.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(StaffSession)) == 0


async def test_logging_out_twice_and_in_parallel(staff):
    alice = await staff()
    answers = await asyncio.gather(*(alice.post("/api/logout") for _ in range(5)))
    assert {a.status for a in answers} <= {200, 401}
    again = await alice.post("/api/logout")
    assert again.status == 401 and (await again.json())["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("header", ["é" * 43, "\u00ff"])
async def test_a_csrf_header_that_is_not_ascii_is_a_403(staff, header):
    alice = await staff()
    response = await alice.client.post("/api/logout", headers={"X-CSRF-Token": header})
    assert response.status == 403 and (await response.json())["error"]["code"] == "csrf"


async def test_header_and_cookie_bytes_that_are_not_utf8_are_refused_not_500(staff):
    alice = await staff()
    session = alice.client.session.cookie_jar.filter_cookies(alice.client.make_url("/api/"))["evr_session"].value
    reader, writer = await asyncio.open_connection(alice.client.host, alice.client.port)
    try:
        for headers in (b"X-CSRF-Token: \xff\xfe\xed\xa0\x80\r\nCookie: evr_session=" + session.encode(),
                        b"Cookie: evr_session=\xff\xfe" + session.encode()):
            writer.write(b"POST /api/logout HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + headers + b"\r\n\r\n")
            await writer.drain()
            status = await reader.readline()
            assert status.split()[1] in (b"401", b"403"), status
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
    finally:
        writer.close()
    assert (await alice.get("/api/me")).status == 200  # the session survived both


async def test_adding_the_same_user_twice_at_once_refuses_one(server):
    name = f"twin-{uuid.uuid4().hex[:6]}"

    async def add() -> str:
        async with server.app[DB]() as db:
            try:
                await add_user(db, name, "officer", PASSWORD, lambda: datetime.now(timezone.utc))
                return "added"
            except ValueError as exc:
                return str(exc)

    results = await asyncio.gather(add(), add(), add())
    assert results.count("added") == 1
    assert all("already exists" in r for r in results if r != "added")
