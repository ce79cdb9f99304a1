"""Two EVR nodes against one PostgreSQL and one Redis, as behind a load balancer:
each room lives on one node; a socket landing on the other is carried to it; what
one node is asked of another's room reaches it; the queue board hears every node.

Both nodes are whole apps (``create_app``, as ``evr serve`` runs them, the media in
worker processes) on their own ports and data directories, in this process; the
clients are aiortc peers over real sockets.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import ELIGIBLE, PASSWORD, PG_URL, claim, eventually, link_path, postgres_database
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from evr.app import create_app
from evr.auth import add_user
from evr.client import CallClient
from evr.cluster import HANDOVER_HEADER
from evr.config import Settings
from evr.http import DB, HUB

REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.skipif(PG_URL == "off", reason="a cluster shares PostgreSQL (EVR_TEST_POSTGRES=off)")


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """The nodes share one PostgreSQL database."""
    async with postgres_database() as url:
        yield url


class Node:
    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.clients: list[TestClient] = []

    async def browser(self) -> TestClient:
        client = TestClient(self.server)
        await client.start_server()
        self.clients.append(client)
        return client

    async def officer(self, name: str) -> tuple[TestClient, str]:
        client = await self.browser()
        response = await client.post("/api/login", json={"username": name, "password": PASSWORD})
        assert response.status == 200, await response.text()
        return client, (await response.json())["csrf_token"]


@pytest.fixture
async def nodes(tmp_path: Any, pg_database: str) -> AsyncIterator[list[Node]]:
    from aiohttp.test_utils import unused_port

    cluster = f"evr-test-{uuid.uuid4().hex[:8]}"
    made: list[Node] = []
    for name in ("a", "b"):
        port = unused_port()
        settings = Settings.load(data_dir=tmp_path / name, environ={}, database_url=pg_database,
                                 login_failure_delay=0.01, redis_url=REDIS_URL, cluster_name=cluster,
                                 cluster_secret="a shared secret of the test cluster",
                                 node_url=f"http://127.0.0.1:{port}")
        server = TestServer(create_app(settings, workers=1), port=port)
        await server.start_server()
        made.append(Node(server))
    async with made[0].server.app[DB]() as db:
        for user in ("alice", "bob"):
            await add_user(db, user, "officer", PASSWORD, lambda: datetime.now(timezone.utc))
    yield made
    for node in made:
        for client in node.clients:
            await client.close()
    for node in reversed(made):
        await node.server.close()


async def consultation_on(node: Node, officer: tuple[TestClient, str]) -> tuple[str, str]:
    client, csrf = officer
    body = {"cad_ref": "CAD-1", "victim": {"phone": "07700 900123"}, "eligibility": ELIGIBLE}
    response = await client.post("/api/consultations", json=body, headers={"X-CSRF-Token": csrf})
    created = await response.json()
    assert response.status == 201, created
    return created["id"], link_path(created["join_url"])


async def victim_on(node: Node, path: str) -> CallClient:
    phone = await node.browser()
    assert (await phone.get(path)).status == 200
    assert (await claim(phone, path)).status == 200
    victim = CallClient(phone.session, str(phone.make_url(path + "/ws")))
    await victim.join()
    return victim


async def console_on(officer: tuple[TestClient, str], cid: str) -> CallClient:
    client, _ = officer
    console = CallClient(client.session, str(client.make_url(f"/api/consultations/{cid}/ws")))
    await console.join()
    return console


async def test_calls_on_two_nodes_meet_on_the_node_holding_their_room(nodes):
    a, b = nodes
    alice_a, alice_b = await a.officer("alice"), await b.officer("alice")
    clients: list[CallClient] = []
    try:
        # Call 1: the victim lands on A (A takes the room); the officer on B, carried to A.
        first, path = await consultation_on(a, alice_a)
        clients.append(await victim_on(a, path))
        clients.append(await console_on(alice_b, first))
        # Call 2, the other way round: B holds it.
        second, path = await consultation_on(b, alice_b)
        clients.append(await victim_on(b, path))
        clients.append(await console_on(alice_a, second))
        for client in clients:
            await client.wait_media(audio=20, video=20)
        hub_a, hub_b = a.server.app[HUB], b.server.app[HUB]
        assert first in hub_a.rooms and first not in hub_b.rooms
        assert second in hub_b.rooms and second not in hub_a.rooms
        # Each node lists who is in the other's call (its node's report in the registry).
        for client, cid in ((alice_b[0], first), (alice_a[0], second)):
            detail = await eventually(lambda client=client, cid=cid: _detail(client, cid),
                                      lambda d: {p["role"] for p in d["participants"] if p["connected"]}
                                      == {"victim", "officer"}, what="the other node's call listed")
            assert detail["status"] == "live"

        # Closing call 1 on B closes the room on A: both its sockets are told, 4000.
        client, csrf = alice_b
        response = await client.post(f"/api/consultations/{first}/close", headers={"X-CSRF-Token": csrf})
        assert response.status == 200, await response.text()
        await eventually(lambda: (clients[0].close_code, clients[1].close_code), lambda c: c == (4000, 4000),
                         what="call 1 closed on the node holding it")
        assert first not in hub_a.rooms

        # Signing out on A ends the session's socket on B (carried there from A): 4003.
        client, csrf = alice_a
        assert (await client.post("/api/logout", headers={"X-CSRF-Token": csrf})).status in (200, 204)
        await eventually(lambda: clients[3].close_code, lambda c: c == 4003, what="the signed-out socket ended")
        assert clients[2].close_code is None  # the victim's call goes on
    finally:
        for client in clients:
            await client.leave()


async def _detail(client: TestClient, cid: str) -> dict[str, Any]:
    response = await client.get(f"/api/consultations/{cid}")
    assert response.status == 200
    return await response.json()


async def test_a_carried_socket_needs_the_clusters_signature(nodes):
    a, _ = nodes
    alice = await a.officer("alice")
    cid, _ = await consultation_on(a, alice)
    browser = await a.browser()
    for handover in (None, "forged.abc", a.server.app[HUB].cluster.handover({"consultation": "other"})):
        headers = {HANDOVER_HEADER: handover} if handover else {}
        response = await browser.get(f"/internal/rooms/{cid}/ws", headers=headers)
        assert response.status == 404


async def test_a_queue_board_on_one_node_hears_of_changes_made_on_the_other(nodes):
    from aiohttp import WSMsgType
    from test_incidents import _incident

    a, b = nodes
    async with a.server.app[DB]() as db:
        await add_user(db, "sarge", "sergeant", PASSWORD, lambda: datetime.now(timezone.utc))
        await add_user(db, "handler", "call_handler", PASSWORD, lambda: datetime.now(timezone.utc))
    handler, handler_csrf = await a.officer("handler")
    sergeant, sergeant_csrf = await a.officer("sarge")
    officer, _ = await b.officer("alice")
    created = await handler.post("/api/incidents", json=_incident("CAD-7"), headers={"X-CSRF-Token": handler_csrf})
    assert created.status == 201, await created.text()
    incident = (await created.json())["id"]
    board = await officer.ws_connect("/api/queue/ws")
    seen: list[list[str]] = []

    async def read() -> None:
        async for msg in board:
            if msg.type == WSMsgType.TEXT and msg.json()["type"] == "queue":
                seen.append([i["id"] for i in msg.json()["incidents"]])

    import asyncio

    reader = asyncio.ensure_future(read())
    try:
        await eventually(lambda: seen, lambda s: s and s[-1] == [], what="the board's first view on B")
        triaged = await sergeant.post(f"/api/incidents/{incident}/triage", json={"decision": "queue"},
                                      headers={"X-CSRF-Token": sergeant_csrf})
        assert triaged.status == 200, await triaged.text()
        await eventually(lambda: seen, lambda s: s[-1] == [incident], what="B's board told of A's triage")
    finally:
        await board.close()
        await reader


def _cluster() -> Any:
    from evr.cluster import Cluster

    return Cluster(Settings.load(data_dir="/nonexistent", environ={}, redis_url=REDIS_URL,
                                 cluster_secret="a shared secret of the test cluster",
                                 node_url="http://127.0.0.1:1"))


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
@hypothesis_settings(max_examples=500, deadline=None)
def test_a_handover_header_of_anything_else_is_refused_never_an_error(value):
    """The header comes from whoever reaches a node's port: only this cluster's own
    signature of a fresh identity is taken."""
    cluster = _cluster()
    assert cluster.check_handover(value) is None
    signed = cluster.handover({"consultation": "c1"})
    assert cluster.check_handover(signed)["consultation"] == "c1"
    body, mac = signed.rsplit(".", 1)
    assert cluster.check_handover(value + signed) is None or value == ""
    assert cluster.check_handover(f"{body}.{value}") is None or value == mac


def test_a_stale_or_foreign_handover_is_refused(monkeypatch):
    import evr.cluster as module

    cluster = _cluster()
    signed = cluster.handover({"consultation": "c1"})
    other = module.Cluster(Settings.load(data_dir="/nonexistent", environ={}, redis_url=REDIS_URL,
                                         cluster_secret="another cluster's secret, long enough",
                                         node_url="http://127.0.0.1:1"))
    assert other.check_handover(signed) is None
    later = module.time.time() + module.HANDOVER_SECONDS + 1
    monkeypatch.setattr(module.time, "time", lambda: later)
    assert cluster.check_handover(signed) is None
