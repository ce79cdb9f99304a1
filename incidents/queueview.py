"""The queue as officers and sergeants see it, fast enough for fifty boards polling.

The queue is small (the incidents ``queued`` or ``allocated``: hundreds at most) and
read far more often than it changes: every officer's board asks for it every few
seconds, and every change pushes it to every open board. So the waiting incidents are
read from the database once per change and kept, each already rendered as JSON but for
the two figures that move with the clock (``waiting_minutes`` and ``overdue``), which
are filled in per answer. An answer is then a check that nothing changed and string
joins, not a query of hundreds of rows and their rendering.

Whether something changed is known two ways: this process's changes each bump a
version (:meth:`evr.incidents.service.Incidents.on_change`, after commit), seen at
once; and the database's count and newest ``updated_at`` of the waiting incidents,
read at most once a second, so a change made by another process (a second server on
the same database, a script) shows within a second.

The rule of who sees what in the queue lives here, once: an officer sees the incidents
allocated to them, then every queued one; a sergeant every allocated and queued one;
oldest report first. ``POST /api/queue/take`` takes the first of the officer's view
(:meth:`evr.incidents.service.Incidents.take`).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from datetime import datetime
from time import monotonic
from typing import Any, Callable, Optional

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evr.auth import Staff
from evr.db import Incident

#: The states of an incident waiting to be taken.
WAITING = ("allocated", "queued")
#: At most this many incidents in one answer.
MOST = 500
#: With no change in this process, the database is asked again after this many seconds
#: whether another process changed the queue.
RECHECK = 1.0


@dataclass(frozen=True)
class Waiting:
    """A waiting incident, rendered but for the figures that move with the clock."""

    id: str
    updated_at: datetime
    state: str
    allocated_to: Optional[int]
    reported_at: datetime
    target_at: Optional[datetime]
    arrived_at: Optional[datetime]
    #: Its JSON object without ``overdue``, ``waiting_minutes`` and the closing brace.
    fragment: str

    def overdue(self, now: datetime) -> bool:
        return self.target_at is not None and self.arrived_at is None and now > self.target_at

    def waiting_minutes(self, now: datetime) -> int:
        return max(0, math.floor((now - self.reported_at).total_seconds() / 60))

    def json(self, now: datetime) -> str:
        """The whole JSON object at ``now``."""
        overdue = "true" if self.overdue(now) else "false"
        return f'{self.fragment},"overdue":{overdue},"waiting_minutes":{self.waiting_minutes(now)}}}'


def visible_to(rows: list[Waiting], staff: Staff) -> list[Waiting]:
    """The queue as ``staff`` sees it (``rows`` oldest report first)."""
    if staff.role == "officer":
        mine = [r for r in rows if r.state == "allocated" and r.allocated_to == staff.id]
        return (mine + [r for r in rows if r.state == "queued"])[:MOST]
    return rows[:MOST]


class QueueView:
    """The waiting incidents, read once per change and rendered once."""

    def __init__(self, render: Callable[[Incident, datetime], dict[str, Any]],
                 target_at: Callable[[Incident], Optional[datetime]]) -> None:
        #: An incident as JSON (:meth:`evr.incidents.service.Incidents.incident_json`).
        self.render = render
        #: When it should have been attended (the grade's target).
        self.target_at = target_at
        self._version = 0
        self._key: Optional[tuple[Any, ...]] = None
        self._rows: list[Waiting] = []
        #: When the database was last asked whether the queue changed (``time.monotonic``).
        self._checked = 0.0
        self._reading = asyncio.Lock()

    def changed(self) -> None:
        """An incident changed (committed in this process): read the queue again."""
        self._version += 1

    def forget(self) -> None:
        """Read the queue again at the next ask (a take lost a race)."""
        self._key = None

    async def rows(self, db: AsyncSession, now: datetime) -> list[Waiting]:
        """Every waiting incident, oldest report first. After a change, the list is read
        again (ids and ``updated_at`` only) and only the incidents that changed are
        loaded and rendered again. One reads at a time: the boards asking just after a
        change wait for that one read rather than each making their own."""
        if self._fresh():
            return self._rows
        async with self._reading:
            if self._fresh():  # read by the ask this one waited for
                return self._rows
            return await self._read(db, now)

    def _fresh(self) -> bool:
        return (self._key is not None and self._key[0] == self._version
                and monotonic() < self._checked + RECHECK)

    async def _read(self, db: AsyncSession, now: datetime) -> list[Waiting]:
        version = self._version
        count, newest = (await db.execute(select(func.count(), func.max(Incident.updated_at))
                                          .where(Incident.state.in_(WAITING)))).one()
        self._checked = monotonic()
        key = (version, count, newest)
        if key == self._key:
            return self._rows
        listed = (await db.execute(select(Incident.id, Incident.updated_at).where(Incident.state.in_(WAITING))
                                   .order_by(Incident.reported_at, Incident.created_at))).all()
        known = {r.id: r for r in self._rows}
        stale = [id_ for id_, updated in listed if id_ not in known or known[id_].updated_at != updated]
        for start in range(0, len(stale), 200):
            for incident in await db.scalars(select(Incident).where(Incident.id.in_(stale[start:start + 200]))):
                known[incident.id] = self._waiting(incident, now)
        rows = [known[id_] for id_, updated in listed if id_ in known and known[id_].updated_at == updated]
        # Read after the key: at least as new as it; a concurrent older read is replaced at
        # the next ask, as is a read in which an incident changed between the two queries
        # (it is left out of this answer, and the key is not kept).
        self._key = key if len(rows) == len(listed) else None
        self._rows = rows
        return rows

    def _waiting(self, incident: Incident, now: datetime) -> Waiting:
        body = self.render(incident, now)
        body.pop("overdue", None)
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return Waiting(id=incident.id, updated_at=incident.updated_at, state=incident.state,
                       allocated_to=incident.allocated_to,
                       reported_at=incident.reported_at, target_at=self.target_at(incident),
                       arrived_at=incident.arrived_at, fragment=text[:-1])

    async def for_staff(self, db: AsyncSession, staff: Staff, now: datetime) -> list[Waiting]:
        return visible_to(await self.rows(db, now), staff)

    async def json(self, db: AsyncSession, staff: Staff, now: datetime) -> str:
        """``{"incidents": [...]}`` as ``GET /api/queue`` answers ``staff``."""
        rows = await self.for_staff(db, staff, now)
        return '{"incidents":[' + ",".join(r.json(now) for r in rows) + "]}"
