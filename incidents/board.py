"""The live queue board: ``GET /api/queue/ws``.

Every officer and sergeant with the board open holds a socket here and gets
``{"type": "queue", "incidents": [...]}`` (their own view, as ``GET /api/queue``
answers them) when it opens and again after every committed change of an incident, so
"Take next", allocations and waiting times are live without reloading.

Changes come from :meth:`evr.incidents.service.Incidents.on_change`, called once the
change's transaction has committed (never for one rolled back). A burst of changes
(twenty officers taking at once) makes one push, not twenty: a push running when
more changes arrive is followed by exactly one more. The push is a task the board
owns (:class:`evr.tasks.TaskSet`), stopped with it.

A socket lives as long as its staff session: logging out closes it at once
(:meth:`QueueBoard.end_sessions`, close code 4003, as the call sockets), and each push
first drops the sockets whose session has expired or whose user was disabled.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Iterable

from aiohttp import WSCloseCode, WSMsgType, web
from sqlalchemy import not_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evr.auth import Staff
from evr.db import StaffSession, User
from evr.tasks import TaskSet
from evr.timeutil import Clock

from .service import Incidents

log = logging.getLogger(__name__)

#: The staff member's session ended (logout, expiry, account disabled): as the call sockets.
CLOSE_SESSION_ENDED = 4003

@dataclass(eq=False)
class Viewer:
    ws: web.WebSocketResponse
    staff: Staff


class QueueBoard:
    """The open queue boards, each pushed its own view after every change."""

    def __init__(self, incidents: Incidents, db: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self.incidents = incidents
        self.db = db
        self.clock = clock
        self.viewers: set[Viewer] = set()
        self.tasks = TaskSet("queue board")
        self._pushing: asyncio.Task[None] | None = None
        self._again = False
        incidents.on_change(self.changed)

    # -- changes -------------------------------------------------------------------

    def changed(self) -> None:
        """An incident changed (committed): push every board once more, soon."""
        if not self.viewers:
            return
        if self._pushing is not None and not self._pushing.done():
            self._again = True  # the push under way may have read before this change
            return
        self._pushing = self.tasks.spawn(self._push_all(), "push the queue")

    async def _push_all(self) -> None:
        while True:
            self._again = False
            await asyncio.sleep(0)  # let a burst of changes gather into this one push
            viewers = await self._current(list(self.viewers))
            for viewer in viewers:
                await self._push(viewer)
            if not self._again:
                return

    async def _push(self, viewer: Viewer) -> None:
        async with self.db() as db:
            queue = await self.incidents.queue_json(db, viewer.staff)
        if viewer.ws.closed:
            return
        try:
            await viewer.ws.send_str('{"type":"queue",' + queue[1:])  # as GET /api/queue answers
        except (ConnectionError, RuntimeError):
            pass  # it went away: its handler drops it

    # -- sessions ------------------------------------------------------------------

    async def _current(self, viewers: list[Viewer]) -> list[Viewer]:
        """The viewers whose session still holds; the others are closed (4003)."""
        wanted = {v.staff.session_id for v in viewers}
        if not wanted:
            return []
        async with self.db() as db:
            live = set(await db.scalars(
                select(StaffSession.id).join(User, User.id == StaffSession.user_id).where(
                    StaffSession.id.in_(wanted), StaffSession.expires_at > self.clock(), not_(User.disabled))))
        await self.end_sessions(wanted - live)
        return [v for v in viewers if v.staff.session_id in live]

    async def end_sessions(self, session_ids: Iterable[str],
                           message: str = "Your session has ended. Sign in again to see the queue.") -> int:
        """Close every board opened with one of these sessions (logout, disable)."""
        ended = set(session_ids)
        targets = [v for v in self.viewers if v.staff.session_id in ended]
        for viewer in targets:
            self.viewers.discard(viewer)
            try:
                await viewer.ws.send_json({"type": "error", "code": "session_ended", "message": message})
            except (ConnectionError, RuntimeError):
                pass
        await asyncio.gather(*(v.ws.close(code=CLOSE_SESSION_ENDED, message=b"session ended") for v in targets),
                             return_exceptions=True)
        return len(targets)

    # -- sockets -------------------------------------------------------------------

    async def serve(self, request: web.Request, staff: Staff) -> web.WebSocketResponse:
        """Run one board's socket: its view now, then after every change, until it
        closes. The board sends; anything the page sends is ignored but a flood."""
        ws = web.WebSocketResponse(heartbeat=25.0, max_msg_size=4096)
        await ws.prepare(request)
        viewer = Viewer(ws, staff)
        self.viewers.add(viewer)
        try:
            await self._push(viewer)
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.viewers.discard(viewer)
        return ws

    async def close(self) -> None:
        """The server is stopping: every board closes (1001), the push stops."""
        viewers, self.viewers = list(self.viewers), set()
        await asyncio.gather(*(v.ws.close(code=WSCloseCode.GOING_AWAY) for v in viewers), return_exceptions=True)
        await self.tasks.close()
