"""Hardening that belongs to the whole service rather than one feature: security
headers on every response (streamed ones too), HSTS, JSON errors for every API (the
victim's under /j/ too), JSON bodies too deep or not encodable, and file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import eventually

from evr.app import create_app
from evr.config import Settings


async def _records(staff: Callable[..., Any]) -> Any:
    return await staff("rita", "records")


async def test_streamed_responses_carry_security_headers(staff: Callable[..., Any]) -> None:
    """The schedule CSV is streamed (prepare() then write): a middleware saw it only
    after its headers had gone, so it went out without CSP, nosniff or no-store."""
    records = await _records(staff)
    response = await records.get("/api/retention/schedule.csv")
    assert response.status == 200, await response.text()
    await response.read()
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"


async def test_plain_and_error_responses_keep_their_headers(staff: Callable[..., Any],
                                                           new_client: Callable[[], Any]) -> None:
    client = await new_client()
    for path in ("/console", "/api/consultations", "/static/no-such-file.js"):
        response = await client.get(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert "Content-Security-Policy" in response.headers, path
    # No HSTS over plain HTTP without an https public_url.
    assert "Strict-Transport-Security" not in response.headers


async def test_hsts_when_public_url_is_https(settings: Settings, clock: Any) -> None:
    """Behind a TLS-terminating proxy the request itself is plain HTTP: HSTS must
    follow public_url, or browsers never learn to refuse a downgrade."""
    settings = Settings.load(data_dir=settings.data_dir, environ={}, database_url=settings.database_url,
                             public_url="https://evr.force.example")
    server = TestServer(create_app(settings, clock=clock))
    await server.start_server()
    client = TestClient(server)
    await client.start_server()
    try:
        for path in ("/console", "/api/me", "/healthz"):
            response = await client.get(path)
            assert response.headers["Strict-Transport-Security"].startswith("max-age="), path
    finally:
        await client.close()
        await server.close()


async def test_victim_apis_answer_json_errors(link: Callable[..., Any]) -> None:
    """Under /j/{token}/ the APIs (uploads, statements) are used by scripts: a wrong
    method or path gets the contract's JSON error, not an HTML page."""
    opened = await link()
    for method, path in (("PUT", opened.path + "/uploads"), ("GET", opened.path + "/no-such-thing"),
                         ("DELETE", opened.path + "/statements")):
        response = await opened.phone.request(method, path)
        assert response.status in (404, 405), (method, path, response.status)
        assert response.content_type == "application/json", (method, path)
        body = await response.json()
        assert body["error"]["code"] in ("not_found", "method_not_allowed")
    # The link's own page stays a page.
    page = await opened.phone.get(opened.path)
    assert page.content_type == "text/html"


@pytest.mark.parametrize("depth", [33, 2000, 30000])
async def test_deep_json_is_refused_not_a_crash(staff: Callable[..., Any], depth: int) -> None:
    officer = await staff()
    body = "[" * depth + "]" * depth
    response = await officer.client.post("/api/consultations", data=body, headers={
        **officer.headers(), "Content-Type": "application/json"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "malformed_json"
    # The service carries on.
    await officer.create()


async def test_lone_surrogate_in_a_body_is_422_and_changes_nothing(staff: Callable[..., Any]) -> None:
    officer = await staff()
    raw = '{"cad_ref": "CAD-1", "victim": {"name": "\\ud800"}, "eligibility": %s}' % (
        '{"adult_or_carer_present": true, "offender_absent": true, "safe_location": true, "consent": true}')
    response = await officer.client.post("/api/consultations", data=raw, headers={
        **officer.headers(), "Content-Type": "application/json"})
    assert response.status == 422
    assert (await response.json())["error"]["code"] == "unencodable_text"
    listed = await (await officer.get("/api/consultations")).json()
    assert listed["consultations"] == []


def _loose(root: Path) -> list[str]:
    """Files or folders under ``root`` that another user could read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if mode & 0o077:
            found.append(f"{path.relative_to(root)} {oct(mode & 0o777)}")
    return found


async def test_everything_the_service_writes_is_its_own(call: Callable[..., Any], settings: Settings,
                                                       staff: Callable[..., Any]) -> None:
    """The database, keys, evidence, the live recording spool: 0700 folders, files
    readable by the service's user alone (the umask is 077 from start-up)."""
    made = await call()
    spool = settings.data_dir / "spool"
    await eventually(lambda: any(p.is_file() for p in spool.rglob("*")), what="a live spool file to check")
    assert _loose(settings.data_dir) == []
    assert settings.data_dir.stat().st_mode & 0o777 == 0o700
    await made.officer.post(f"/api/consultations/{made.id}/close")


def test_a_data_dir_made_wider_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    settings = Settings.load(data_dir=data, environ={})
    old = os.umask(0o022)
    try:
        settings.prepare_data_dir()
        assert data.stat().st_mode & 0o777 == 0o700
        (data / "later.txt").write_text("x")
        assert (data / "later.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


async def _login_client(settings: Settings, clock: Any, forwarded: str) -> str:
    """Log in through a server with ``settings`` sending ``X-Forwarded-For``; the
    client address the audit log kept for the login."""
    from conftest import PASSWORD
    from sqlalchemy import select

    from evr.auth import add_user
    from evr.db import AuditEntry
    from evr.http import DB

    server = TestServer(create_app(settings, clock=clock))
    await server.start_server()
    client = TestClient(server)
    await client.start_server()
    try:
        async with server.app[DB]() as db:
            await add_user(db, "olga", "officer", PASSWORD, clock)
        response = await client.post("/api/login", json={"username": "olga", "password": PASSWORD},
                                     headers={"X-Forwarded-For": forwarded})
        assert response.status == 200, await response.text()
        async with server.app[DB]() as db:
            entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == "auth.login"))
        return entry.client
    finally:
        await client.close()
        await server.close()


async def test_client_address_behind_a_trusted_proxy(settings: Settings, clock: Any) -> None:
    """Behind the force's proxy every request comes from the proxy: the throttles would
    lock the whole force out together and the audit log would name the proxy. Only a
    trusted proxy's X-Forwarded-For counts, and only its right-most untrusted hop."""
    proxied = Settings.load(data_dir=settings.data_dir, environ={}, database_url=settings.database_url,
                            trusted_proxies="127.0.0.0/8, ::1")
    assert await _login_client(proxied, clock, "198.51.100.1, 203.0.113.7") == "203.0.113.7"


async def test_forwarded_for_is_ignored_without_trusted_proxies(settings: Settings, clock: Any) -> None:
    assert await _login_client(settings, clock, "203.0.113.7") in ("127.0.0.1", "::1")


def test_trusted_proxies_must_be_addresses(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings.load(data_dir=tmp_path, environ={}, trusted_proxies="10.0.0.0/8, proxy.example")


async def test_logout_ends_the_session_with_its_audit_entry(staff: Callable[..., Any],
                                                            audit_fails: Callable[[], None]) -> None:
    officer = await staff()
    audit_fails()
    response = await officer.post("/api/logout")
    assert response.status == 500
    # Not logged out without the entry that says so: the session still works.
    assert (await officer.get("/api/me")).status == 200


@pytest.mark.parametrize("query", ["consultation=%00", "consultation=a%01b", "x%00=1", "consultation=a%0Ab"])
async def test_query_parameters_with_controls_are_400(staff: Callable[..., Any], query: str) -> None:
    """A NUL in any query parameter reached PostgreSQL from the outbox (a 500)."""
    from yarl import URL

    officer = await staff()
    response = await officer.client.get(URL(f"/api/outbox?{query}", encoded=True))
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "invalid_parameter"


async def test_the_victims_socket_refuses_with_json(link: Callable[..., Any], new_client: Callable[[], Any]) -> None:
    opened = await link()
    stranger = await new_client()
    response = await stranger.get(opened.path + "/ws")
    assert response.status == 403 and response.content_type == "application/json"
    assert (await response.json())["error"]["code"] == "link_in_use"
