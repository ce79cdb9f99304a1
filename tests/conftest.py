"""Fixtures: a real server per test on SQLite and on PostgreSQL, staff and victim clients.

Every test that uses ``app`` runs twice: on a SQLite file and on a fresh database in
the PostgreSQL server at ``EVR_TEST_POSTGRES`` (default
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``). Set ``EVR_TEST_POSTGRES=off``
to run on SQLite only (CI never does).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar, Union

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from evr.app import create_app
from evr.auth import add_user
from evr.config import Settings
from evr.http import DB

#: Fixtures shared by several test modules, each in a module of its own: the browser
#: (Chromium, pages, screenshots and axe-core scans) and a real S3 server (moto).
pytest_plugins = ["browser_fixtures", "s3server"]

PG_URL = os.environ.get("EVR_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
PASSWORD = "correct horse battery staple"
#: Media worker processes of the tests' server (0: the media runs in the test's process);
#: ``EVR_TEST_MEDIA_WORKERS=2`` runs the whole suite as ``evr serve --workers 2`` does.
MEDIA_WORKERS = int(os.environ.get("EVR_TEST_MEDIA_WORKERS", "0"))
#: A test that looks inside the bridge's rooms, which live in the test's process only
#: when the media does (a media worker's rooms are another process's).
in_process_room = pytest.mark.skipif(MEDIA_WORKERS > 0, reason="looks inside a room of the test's process")
ELIGIBLE = {"adult_or_carer_present": True, "offender_absent": True, "safe_location": True, "consent": True}


T = TypeVar("T")


async def eventually(probe: Callable[[], Union[T, Awaitable[T]]], until: Callable[[T], Any] = bool, *,
                     timeout: float = 10.0, interval: float = 0.05, what: str = "the condition") -> T:
    """Poll ``probe`` (a function or coroutine function) until ``until(value)`` holds, and
    return that value: a test waits for what it means to see, never for a fixed time.

    After ``timeout`` seconds it fails with an ``AssertionError`` that names ``what`` and
    the last value seen, so a failure says where things stood. It fails only after a
    last probe made past the deadline, once the event loop has had a turn."""
    deadline = time.monotonic() + timeout
    last = False
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value  # type: ignore[return-value]
        if last:
            raise AssertionError(f"{what} did not hold within {timeout:g} s; last seen: {value!r}")
        del value  # keep nothing a probe found alive (a probe may look for what should be gone)
        # Past the deadline, one last probe after the loop has run once more: on a busy
        # machine a slow probe may use up the time before what it waits for could happen.
        last = time.monotonic() >= deadline
        # A real pause (not sleep(0), which resumes this task before any timer now due).
        await asyncio.sleep(max(0.01, min(interval, deadline - time.monotonic())))


class Clock:
    """An injectable clock: real time plus whatever a test adds."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def advance(self, **kwargs: float) -> None:
        self.offset += timedelta(**kwargs)


def _backends() -> list[str]:
    return ["sqlite"] if PG_URL == "off" else ["sqlite", "postgresql"]


@pytest.fixture(params=_backends())
async def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'evr.sqlite3'}"
        return
    async with postgres_database() as url:
        yield url


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A database of its own on the test PostgreSQL server, dropped afterwards."""
    plain = PG_URL.replace("+asyncpg", "")
    name = f"evr_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(plain)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(plain)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path: Any, db_url: str) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", environ={}, database_url=db_url,
                         login_failure_delay=0.01)


@pytest.fixture
async def server(settings: Settings, clock: Clock) -> AsyncIterator[TestServer]:
    # As `evr serve` does at start (evr.cli._freeze_startup): what exists now is moved
    # out of the collector's way. Without it, late in a full run (a million objects
    # from earlier tests), one full collection stops this process's event loop, and so
    # a call's media, for about a second: a false network_loss gap in a recording.
    gc.collect()
    gc.freeze()
    app = create_app(settings, clock=clock, workers=MEDIA_WORKERS)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def new_client(server: TestServer) -> AsyncIterator[Callable[[], Any]]:
    """Make a browser-like client (its own cookie jar) of the running server."""
    clients: list[TestClient] = []

    async def make() -> TestClient:
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def users(server: TestServer) -> Callable[..., Any]:
    async def make(name: str, role: str = "officer") -> None:
        async with server.app[DB]() as db:
            await add_user(db, name, role, PASSWORD, lambda: datetime.now(timezone.utc))

    return make


class Staff:
    """A logged-in staff browser."""

    def __init__(self, client: TestClient, csrf: str) -> None:
        self.client = client
        self.csrf = csrf

    def headers(self) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf}

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.client.post(path, json=body, headers=self.headers())

    async def get(self, path: str) -> Any:
        return await self.client.get(path)

    async def create(self, **extra: Any) -> dict[str, Any]:
        body = {"cad_ref": "CAD-2026-000123", "victim": {"phone": "07700 900123"}, "eligibility": ELIGIBLE, **extra}
        response = await self.post("/api/consultations", body)
        assert response.status == 201, await response.text()
        return await response.json()

    async def consultation(self, cid: str) -> dict[str, Any]:
        response = await self.get(f"/api/consultations/{cid}")
        assert response.status == 200, await response.text()
        return await response.json()

    def ws_url(self, cid: str) -> str:
        return str(self.client.make_url(f"/api/consultations/{cid}/ws"))


@pytest.fixture
def staff(new_client: Callable[[], Any], users: Callable[..., Any]) -> Callable[..., Any]:
    async def login(name: str = "alice", role: str = "officer") -> Staff:
        await users(name, role)
        client = await new_client()
        response = await client.post("/api/login", json={"username": name, "password": PASSWORD})
        assert response.status == 200, await response.text()
        return Staff(client, (await response.json())["csrf_token"])

    return login


def link_path(join_url: str) -> str:
    return "/j/" + join_url.rsplit("/j/", 1)[1]


def origin_of(client: TestClient) -> str:
    """The ``Origin`` header a browser sends for the server's own pages."""
    url = client.make_url("/")
    return f"{url.scheme}://{url.raw_authority}"


async def claim(client: TestClient, path: str, **headers: str) -> Any:
    """What the victim's page does at its first button: ``POST {path}/claim``, same origin."""
    return await client.post(path + "/claim", headers={"Origin": origin_of(client), **headers})


class Link:
    """A consultation whose link a victim's browser (``phone``) has opened and claimed."""

    def __init__(self, officer: Staff, created: dict[str, Any], phone: TestClient) -> None:
        self.officer = officer
        self.created = created
        self.id = created["id"]
        self.phone = phone
        self.path = link_path(created["join_url"])

    @property
    def ws_url(self) -> str:
        return str(self.phone.make_url(self.path + "/ws"))


@pytest.fixture
def link(staff: Callable[..., Any], new_client: Callable[[], Any]) -> Callable[..., Any]:
    async def make(officer_name: str = "alice") -> Link:
        officer = await staff(officer_name)
        created = await officer.create()
        phone = await new_client()
        path = link_path(created["join_url"])
        assert (await phone.get(path)).status == 200  # the page binds nothing...
        claimed = await claim(phone, path)  # ...its first button claims the link
        assert claimed.status == 200, await claimed.text()
        return Link(officer, created, phone)

    return make


class Call:
    """A link with a victim and an officer joined (aiortc clients), media flowing."""

    def __init__(self, link: Link, victim: Any, console: Any) -> None:
        self.link, self.victim, self.console = link, victim, console
        self.officer, self.id, self.phone = link.officer, link.id, link.phone


@pytest.fixture
async def call(link: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """Make calls; every client made through ``call.client`` leaves at teardown."""
    from evr.client import CallClient

    clients: list[CallClient] = []

    def client(http: Any, ws_url: str, **kwargs: Any) -> CallClient:
        made = CallClient(http, ws_url, **kwargs)
        clients.append(made)
        return made

    async def make(decode: bool = False, officer_name: str = "alice", **options: Any) -> Call:
        opened = await link(officer_name)
        victim = client(opened.phone.session, opened.ws_url, decode=decode, **options)
        console = client(opened.officer.client.session, opened.officer.ws_url(opened.id), decode=decode, **options)
        await victim.join()
        await console.join()
        return Call(opened, victim, console)

    make.client = client  # type: ignore[attr-defined]
    yield make
    for made in clients:
        await made.leave()


class AuditFault(RuntimeError):
    """Raised by the audit log while ``audit_fails`` is on."""


@pytest.fixture
def audit_fails(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make the next audit append fail, after the change it belongs to was made.

    A change written in the same transaction as its audit entry
    (``AuditLog.transaction()``) is then rolled back; a change committed on its own
    first survives, and the test that checks the state afterwards catches it. Call the
    returned function to turn the fault on (set up the test's data first)."""
    from evr import audit

    real = audit.Appender.add

    def turn_on() -> None:
        def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
            real(self, *args, **kwargs)  # the entry is built and added to the session...
            raise AuditFault("audit write failed (test fault)")  # ...then the write fails

        monkeypatch.setattr(audit.Appender, "add", failing)

    return turn_on
