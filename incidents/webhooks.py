"""Webhooks to the force's command-and-control system: each step it needs to know of,
signed, kept in an outbox, retried until it is taken, in order per incident.

Why an outbox: the event must go out if and only if the change happened. So the event
is a row (:class:`evr.db.WebhookDelivery`) written by
:meth:`evr.incidents.service.Incidents.apply` in the change's own transaction, its body
fixed then: the exact bytes that are signed and sent, however often. A change rolled
back leaves no event; a server killed before sending sends after its restart.

The events (the contract's): ``incident.dispatched`` (an officer took it),
``incident.arrived`` (the officer joined the call), ``incident.submitted`` (the
investigation record), ``incident.reviewed`` (the sergeant's review), and
``incident.closed`` when an incident reaches a state it never leaves (rejected at
triage, finalised, passed to patrol): a review that closes it sends ``reviewed``, then
``closed``.

Delivery (:class:`Webhooks`, one task it owns): ``POST webhook_url`` with the body
``{"event", "incident", "at"}`` (canonical JSON: keys sorted, no spaces, UTF-8) and
``X-EVR-Signature: sha256=<hex HMAC-SHA256 of the body with webhook_secret>``, plus
``X-EVR-Event`` and ``X-EVR-Delivery`` (the outbox row's id, the same on every attempt:
a receiver that got an event twice, after an answer lost on the way back, can tell).
Only a 2xx answer delivers it; anything else (an error status, a redirect, a timeout,
a refused connection) is tried again after 2, 4, 8... seconds, at most
:data:`MOST_BACKOFF` apart, for as long as it takes. An incident's events go strictly
one after another: its next is not sent before the one before it was taken, while
other incidents' events go on. Each attempt is claimed in the database first (the
next attempt time moved ahead by :data:`LEASE`), so two servers on one database never
send the same attempt at once.

Nothing of the receiver's answer is kept or logged but its status (its text could
echo anything); the body carries the incident without the victim's details.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta
from typing import Any, Optional, cast

import aiohttp
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evr.audit.writing import Appender
from evr.config import Settings
from evr.db import INCIDENT_CLOSED_STATES, WebhookDelivery
from evr.tasks import TaskSet
from evr.timeutil import Clock, rfc3339

log = logging.getLogger(__name__)

#: The event of each step of :data:`evr.incidents.service.STEPS` the system hears of.
STEP_EVENTS = {"take": "incident.dispatched", "arrived": "incident.arrived", "submit": "incident.submitted",
               "review": "incident.reviewed"}
CLOSED_EVENT = "incident.closed"
SIGNATURE_HEADER = "X-EVR-Signature"
#: The first retry waits this long; each next one twice as long, up to MOST_BACKOFF.
FIRST_BACKOFF = timedelta(seconds=2)
MOST_BACKOFF = timedelta(minutes=15)
#: An attempt's claim: another server may try the event again after this long.
LEASE = timedelta(seconds=60)
#: How long one attempt may take, connection to answer.
ATTEMPT_TIMEOUT = 10.0
#: Events sent at once (each of a different incident).
PARALLEL = 4
#: How often the outbox is looked at when nothing new was written (seconds).
POLL = 1.0


def events_for(step_name: str, old_state: str, new_state: str) -> list[str]:
    """The events a step sends (none for most)."""
    events = []
    step = step_name.split(":", 1)[0]
    if step in STEP_EVENTS:
        events.append(STEP_EVENTS[step])
    if new_state != old_state and new_state in INCIDENT_CLOSED_STATES:
        events.append(CLOSED_EVENT)
    return events


def canonical(value: Any) -> bytes:
    """JSON as it is signed and sent: keys sorted, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(secret: str, body: bytes) -> str:
    """The ``X-EVR-Signature`` of ``body``: ``sha256=`` and the HMAC-SHA256 in hex."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt."""
    return min(MOST_BACKOFF, FIRST_BACKOFF * (2 ** min(max(attempts - 1, 0), 20)))


class Webhooks:
    """The outbox's writer (:meth:`enqueue`, in a change's transaction) and its sender."""

    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self.url = settings.webhook_url
        self.secret = settings.webhook_secret
        self.db = db
        self.clock = clock
        self.tasks = TaskSet("webhooks")
        self._wake = asyncio.Event()
        self._http: Optional[aiohttp.ClientSession] = None

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    # -- writing, in the change's transaction

    def enqueue(self, tx: Appender, incident_id: str, incident: dict[str, Any], events: list[str],
                at: datetime) -> None:
        """Add ``events`` of ``incident`` (as JSON, without the victim's details) to the
        outbox in ``tx``; the sender wakes once it commits."""
        if not self.enabled or not events:
            return
        for event in events:
            body = canonical({"event": event, "incident": incident, "at": rfc3339(at)})
            tx.db.add(WebhookDelivery(incident_id=incident_id, event=event, body=body.decode("utf-8"),
                                      created_at=at, attempts=0, next_attempt_at=at))
        tx.on_commit(self._wake.set)

    # -- sending

    def start(self) -> None:
        if self.enabled:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT),
                                               headers={"User-Agent": "EVR webhooks"})
            self.tasks.spawn(self._run(), "deliver")

    async def close(self) -> None:
        await self.tasks.close()
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.deliver_due()
            except Exception:  # noqa: BLE001 - a database hiccup: try again at the next poll
                log.exception("webhook delivery pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=POLL)
            except TimeoutError:
                pass

    async def deliver_due(self) -> int:
        """One pass: send every incident's oldest undelivered event that is due, at most
        :data:`PARALLEL` at a time. Returns how many were taken (2xx)."""
        now = self.clock()
        async with self.db() as db:
            heads = (select(func.min(WebhookDelivery.id)).where(WebhookDelivery.delivered_at.is_(None))
                     .group_by(WebhookDelivery.incident_id))
            due = list(await db.scalars(select(WebhookDelivery).where(
                WebhookDelivery.id.in_(heads), WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.id).limit(100)))
        if not due:
            return 0
        gate = asyncio.Semaphore(PARALLEL)

        async def one(row: WebhookDelivery) -> bool:
            async with gate:
                return await self._attempt(row)

        results = await asyncio.gather(*(one(row) for row in due))
        if any(results):
            self._wake.set()  # each taken event may have one behind it: look again at once
        return sum(results)

    async def _attempt(self, row: WebhookDelivery) -> bool:
        if not await self._claim(row):
            return False
        body = row.body.encode("utf-8")
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self.secret, body),
                   "X-EVR-Event": row.event, "X-EVR-Delivery": str(row.id)}
        error: Optional[str] = None
        assert self._http is not None
        try:
            async with self._http.post(self.url, data=body, headers=headers, allow_redirects=False) as answer:
                if not 200 <= answer.status < 300:
                    error = f"HTTP {answer.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
        await self._settle(row, error)
        return error is None

    async def _claim(self, row: WebhookDelivery) -> bool:
        """Move the attempt's time ahead by :data:`LEASE` if no one else has: ours then."""
        async with self.db() as db:
            claimed = await db.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == row.id, WebhookDelivery.delivered_at.is_(None),
                                              WebhookDelivery.next_attempt_at == row.next_attempt_at)
                .values(next_attempt_at=self.clock() + LEASE).execution_options(synchronize_session=False))
            await db.commit()
        return cast(CursorResult[Any], claimed).rowcount == 1

    async def _settle(self, row: WebhookDelivery, error: Optional[str]) -> None:
        attempts = row.attempts + 1
        now = self.clock()
        values: dict[str, Any] = {"attempts": attempts, "last_error": error}
        if error is None:
            values["delivered_at"] = now
            log.info("webhook %s delivered (delivery=%s, attempt %d)", row.event, row.id, attempts)
        else:
            values["next_attempt_at"] = now + backoff(attempts)
            log.warning("webhook %s not taken: %s (delivery=%s, attempt %d); again in %s",
                        row.event, error, row.id, attempts, backoff(attempts))
        async with self.db() as db:
            await db.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(**values)
                             .execution_options(synchronize_session=False))
            await db.commit()
