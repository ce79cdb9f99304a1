"""A staff socket ends with its session (issue 11, finding 18, the socket half):
logging out ends it at once; a session deleted or a user disabled from another
process (``evr user disable``) ends it within a few seconds."""

from __future__ import annotations

import asyncio

from conftest import PASSWORD
from sqlalchemy import delete, update

from evr.client import CallClient
from evr.db import StaffSession, User
from evr.http import DB


async def open_socket(officer, cid: str) -> CallClient:
    client = CallClient(officer.client.session, officer.ws_url(cid))
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "state")
    return client


async def test_logout_ends_that_sessions_sockets_at_once(staff, new_client):
    officer = await staff()
    created = await officer.create()
    socket = await open_socket(officer, created["id"])
    # The same officer, signed in on another device, in another call keeps their socket.
    other = await new_client()
    login = await other.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert login.status == 200
    second = await officer.create()
    other_socket = CallClient(other.session, str(other.make_url(f"/api/consultations/{second['id']}/ws")))
    await other_socket.connect()
    await other_socket.wait_for(lambda m: m["type"] == "state")
    try:
        assert (await officer.post("/api/logout")).status == 200
        await asyncio.wait_for(socket.closed.wait(), 2)
        assert socket.close_code == 4003
        ended = [m for m in socket.messages if m.get("code") == "session_ended"]
        assert ended and ended[0]["message"]
        await asyncio.sleep(2.5)  # past a session check
        assert not other_socket.ws.closed
        await other_socket.send({"type": "pause"})
        await other_socket.wait_for(lambda m: m["type"] == "state" and m["status"] == "paused")
    finally:
        await socket.leave()
        await other_socket.leave()


async def test_a_session_deleted_elsewhere_ends_the_socket(staff, server):
    officer = await staff()
    created = await officer.create()
    socket = await open_socket(officer, created["id"])
    try:
        async with server.app[DB]() as db:  # what another process (the CLI) does
            await db.execute(delete(StaffSession))
            await db.commit()
        await asyncio.wait_for(socket.closed.wait(), 3.5)
        assert socket.close_code == 4003
    finally:
        await socket.leave()


async def test_a_user_disabled_elsewhere_loses_the_socket(staff, server):
    sergeant = await staff("sam", "sergeant")
    officer = await staff()
    created = await officer.create()
    socket = await open_socket(officer, created["id"])
    watching = await open_socket(sergeant, created["id"])
    try:
        async with server.app[DB]() as db:  # `evr user disable alice`, in its own process
            await db.execute(update(User).where(User.username == "alice").values(disabled=True))
            await db.commit()
        await asyncio.wait_for(socket.closed.wait(), 3.5)
        assert socket.close_code == 4003
        assert not watching.ws.closed  # only alice's
    finally:
        await socket.leave()
        await watching.leave()
