"""The live queue board (``GET /api/queue/ws``): each officer's and sergeant's own view
at once and after every committed change, nothing for a change rolled back, and the
board ends with its session."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType
from conftest import eventually
from test_incidents import _incident, _json, team  # noqa: F401 (fixture)

from evr.http import QUEUE_BOARD


class Board:
    """A queue board's socket and everything it was sent."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                self.messages.append(msg.json())

    def ids(self) -> list[list[str]]:
        return [[i["id"] for i in m["incidents"]] for m in self.messages if m["type"] == "queue"]

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def _board(who: Any) -> Board:
    return Board(await who.client.ws_connect("/api/queue/ws"))


async def test_each_board_gets_its_own_view_at_once_and_after_every_change(team, staff):
    handler, sergeant, officer = await team()
    other = await staff("bob", "officer")
    older = await _json(await handler.post("/api/incidents", _incident("CAD-1", hours_ago=5)), 201)
    newer = await _json(await handler.post("/api/incidents", _incident("CAD-2", hours_ago=1)), 201)
    mine, theirs, desk = await _board(officer), await _board(other), await _board(sergeant)
    try:
        await eventually(lambda: [b.ids() for b in (mine, theirs, desk)], lambda seen: seen == [[[]]] * 3,
                         what="each board's first view: nothing queued")
        await _json(await sergeant.post(f"/api/incidents/{older['id']}/triage", {"decision": "queue"}), 200)
        await _json(await sergeant.post(f"/api/incidents/{newer['id']}/triage",
                                        {"decision": "allocate", "officer": "alice", "reason": "high harm"}), 200)
        # Alice: her allocated one first, then the queued one; Bob: only the queued one; the
        # sergeant: every waiting one, oldest report first.
        await eventually(mine.ids, lambda seen: seen[-1] == [newer["id"], older["id"]], what="alice's board")
        await eventually(theirs.ids, lambda seen: seen[-1] == [older["id"]], what="bob's board")
        await eventually(desk.ids, lambda seen: seen[-1] == [older["id"], newer["id"]], what="the sergeant's desk")
        item = mine.messages[-1]["incidents"][1]
        assert item["waiting_minutes"] >= 299 and "victim" not in item  # the board shows no victim details
        await _json(await other.post("/api/queue/take"), 200)  # Bob takes the queued one
        await eventually(mine.ids, lambda seen: seen[-1] == [newer["id"]], what="alice's board after bob took")
        await eventually(theirs.ids, lambda seen: seen[-1] == [], what="bob's board after his take")
    finally:
        for board in (mine, theirs, desk):
            await board.close()


async def test_a_change_rolled_back_is_never_announced(team, server, audit_fails):
    handler, sergeant, officer = await team()
    created = await _json(await handler.post("/api/incidents", _incident()), 201)
    board = await _board(officer)
    try:
        await eventually(board.ids, lambda seen: seen == [[]], what="the first view")
        pushes = []
        server.app[QUEUE_BOARD].incidents.on_change(lambda: pushes.append(1))
        audit_fails()
        refused = await sergeant.post(f"/api/incidents/{created['id']}/triage", {"decision": "queue"})
        assert refused.status == 500
        assert pushes == [] and board.ids() == [[]]
    finally:
        await board.close()


async def test_a_burst_of_changes_makes_few_pushes_and_the_last_is_the_truth(team, staff):
    handler, sergeant, officer = await team()
    made = [await _json(await handler.post("/api/incidents", _incident(f"CAD-{n}", hours_ago=10 - n)), 201)
            for n in range(6)]
    board = await _board(officer)
    try:
        await eventually(board.ids, lambda seen: seen == [[]], what="the first view")
        await asyncio.gather(*(sergeant.post(f"/api/incidents/{i['id']}/triage", {"decision": "queue"})
                               for i in made))
        final = [i["id"] for i in made]  # oldest report first
        await eventually(board.ids, lambda seen: seen[-1] == final, what="every queued incident, oldest first")
        assert len(board.ids()) <= 1 + len(made)  # never more pushes than changes
    finally:
        await board.close()


async def test_only_officers_and_sergeants_open_it_and_it_ends_with_the_session(team, new_client):
    handler, sergeant, officer = await team()
    refused = await handler.client.get("/api/queue/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                                 "Sec-WebSocket-Version": "13",
                                                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert refused.status == 403
    stranger = await new_client()
    assert (await stranger.get("/api/queue/ws")).status == 401
    board = await _board(officer)
    await eventually(board.ids, lambda seen: seen == [[]], what="the first view")
    assert (await officer.post("/api/logout")).status == 200
    await asyncio.wait_for(board.reader, 2.0)
    assert board.ws.close_code == 4003
    assert board.messages[-1]["code"] == "session_ended"
