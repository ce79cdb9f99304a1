"""The composition root: every service of a running EVR, built and wired in one place.

Each feature module only registers routes (``setup(app)``); what its handlers use is
made here, in dependency order, and handed over under the typed keys of
:mod:`evr.http`. So one reading of :func:`services` shows the whole service graph:
which service holds the database, the evidence store, the audit log (with its
signing key and checkpoint store attached here, at birth), and which background
tasks run. Teardown runs in reverse, after ``on_shutdown`` has closed the sockets
(aiohttp's ``cleanup_ctx``, as in its ``examples/background_tasks.py``).

What the server and every command that changes records share (the database, the
evidence store, the signing key and the audit log) is :func:`core`: ``evr serve``
builds on it here, ``evr user`` and ``evr retention`` open it alone.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .audit import AuditLog
from .auth import Authenticator
from .config import Settings
from .consultations import Consultations
from .db import make_engine, migrate, sessionmaker
from .evidence import EvidenceStore, make_store
from .http import (
    AUDIT,
    AUTH,
    CHAT,
    CLOCK,
    CONSULTATIONS,
    DB,
    GUESTS,
    HUB,
    INCIDENTS,
    LOCATIONS,
    MEDIA_WORKERS,
    NOTIFIER,
    QUEUE_BOARD,
    RECORDINGS,
    REDACTIONS,
    RETENTION,
    SETTINGS,
    SIGNING_KEY,
    STATEMENTS,
    STORE,
    SURVEYS,
    UNKNOWN_TOKENS,
    UPLOADS,
)
from .keys import load_signing_key
from .links import UnknownTokens
from .notify import make_notifier
from .tasks import TaskSet
from .timeutil import Clock, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Core:
    """The database, the evidence store, the service's signing key and the audit log."""

    db: async_sessionmaker[AsyncSession]
    store: EvidenceStore
    signing_key: Ed25519PrivateKey
    audit: AuditLog


@asynccontextmanager
async def core(settings: Settings, clock: Clock = utcnow,
               schema: Callable[[AsyncEngine], Awaitable[Any]] = migrate) -> AsyncIterator[Core]:
    """Open the core: the database brought to the shipped schema by ``schema``
    (migrated, by default), the evidence store, the signing key and the audit log with
    both. On the way out the newest audit entries get a signed checkpoint, the store's
    connections close and the database's pool is disposed of, whatever happened."""
    settings.prepare_data_dir()
    engine = make_engine(settings.db_url)
    store = None
    try:
        await schema(engine)
        db = sessionmaker(engine)
        store = make_store(settings)
        signing_key = load_signing_key(settings)
        audit = AuditLog(db, clock, signing_key, store, settings.audit_checkpoint_every)
        try:
            yield Core(db, store, signing_key, audit)
        finally:
            try:
                await audit.checkpoint()
            except Exception:  # noqa: BLE001 - the next run signs it
                log.exception("could not sign the audit checkpoint")
    finally:
        if store is not None:
            await store.close()
        await engine.dispose()


async def services(app: web.Application) -> AsyncIterator[None]:
    """Build every service before the first request; stop them after the last."""
    from .media.passthrough import check_compatible

    check_compatible()  # the aiortc hooks: refuse to start, naming what is missing
    settings, clock = app[SETTINGS], app[CLOCK]
    notifier = app[NOTIFIER] = app.get(NOTIFIER) or make_notifier(settings)
    app[AUTH] = Authenticator(settings, clock)
    try:
        async with core(settings, clock) as opened, _features(app, opened):
            yield
    finally:
        await notifier.close()


@asynccontextmanager
async def _features(app: web.Application, opened: Core) -> AsyncIterator[None]:
    """Everything built on the core, and the background tasks; stopped in reverse."""
    from .chat import Chat
    from .cluster import Cluster
    from .evaluation.surveys import Surveys, remind_forever
    from .guests import Guests
    from .incidents.board import QueueBoard
    from .incidents.service import Incidents
    from .incidents.webhooks import Webhooks
    from .location import Locations
    from .media.pool import MediaPool
    from .recording.redactions import Jobs, Redactor
    from .recording.service import Recordings
    from .retention.policy import Policy
    from .retention.service import Retention, sweep_forever
    from .signalling import Hub
    from .statements.service import Statements
    from .statements.signing import load_identity
    from .uploads.service import Uploads, purge_forever

    settings, clock, notifier = app[SETTINGS], app[CLOCK], app[NOTIFIER]
    db = app[DB] = opened.db
    store = app[STORE] = opened.store
    signing_key = app[SIGNING_KEY] = opened.signing_key
    audit = app[AUDIT] = opened.audit
    consultations = app[CONSULTATIONS] = Consultations(settings, clock, notifier, audit)
    app[GUESTS] = Guests(settings, clock, consultations)
    app[UNKNOWN_TOKENS] = UnknownTokens(settings.link_unknown_per_minute)
    webhooks = Webhooks(settings, db, clock)
    incidents = app[INCIDENTS] = Incidents(settings, clock, audit, webhooks)
    consultations.on_status(incidents.consultation_status)  # a call closed goes on its incident's timeline
    board = app[QUEUE_BOARD] = QueueBoard(incidents, db, clock)
    surveys = app[SURVEYS] = Surveys(settings, clock, audit, consultations)

    # The media workers and the cluster stop whatever happens after they start (a
    # failed start too): after the rest below, in reverse.
    async with AsyncExitStack() as stack:
        cluster = Cluster(settings) if settings.redis_url else None
        if cluster is not None:
            await cluster.start()
            stack.push_async_callback(cluster.close)
        recordings = app[RECORDINGS] = Recordings(settings, clock, db, store, signing_key, audit)
        # In a cluster other nodes are recording now: only what this node spooled is closed.
        closed = await recordings.recover(local_only=cluster is not None)
        if closed:
            log.warning("closed %d recording(s) left open by an unclean stop", closed)

        chat = app[CHAT] = Chat(clock, db, store, signing_key, audit, consultations)
        consultations.on_status(chat.consultation_status)  # a close seals the transcript, in a task of its own
        sealed = await chat.recover()
        if sealed:
            log.warning("sealed the chat of %d closed consultation(s) left unsealed", sealed)
        locations = app[LOCATIONS] = Locations(clock, audit)
        media = None
        if app[MEDIA_WORKERS] > 0:  # after recover(): nothing records until the workers run
            media = MediaPool(settings, app[MEDIA_WORKERS], recordings.recover)
            stack.push_async_callback(media.close)  # its rooms are closed first, by on_shutdown (the hub's)
            await media.start()
        app[HUB] = Hub(settings, clock, db, consultations, [recordings.sink] if settings.recording else [],
                       chat=chat, locations=locations, media=media, cluster=cluster)
        if cluster is not None:  # every node's boards hear of a change made on any node
            incidents.on_change(lambda: cluster.publish_soon("queue"))
            cluster.on("queue", lambda _m: _queue_changed(incidents, board))
            cluster.on("end_sessions", lambda m: _end_board_sessions(board, m))

        uploads = app[UPLOADS] = Uploads(settings, clock, db, store, audit)
        await uploads.recover()

        identity = await asyncio.to_thread(load_identity, settings)
        statements = app[STATEMENTS] = Statements(settings, clock, db, store, audit, identity)
        recovered = await statements.recover()
        if recovered:
            log.warning("%d statement(s) were being sealed at an unclean stop; recovered", recovered)

        jobs = app[REDACTIONS] = Jobs(settings, clock, db, audit)

        policy = Policy.from_config(settings.retention)
        retention = app[RETENTION] = Retention(db, audit, store, policy, clock, signing_key)

        background = TaskSet("services")
        background.spawn(purge_forever(uploads), "purge unfinished uploads")
        background.spawn(_one_node(cluster, "retention sweep", lambda: sweep_forever(retention, policy.sweep_minutes)),
                         "retention sweep")
        background.spawn(_one_node(cluster, "survey reminders", lambda: remind_forever(surveys)), "survey reminders")
        if settings.redaction_workers > 0:  # else left to `evr worker` processes
            redactor = Redactor(settings, clock, db, store, signing_key, audit, jobs, settings.redaction_workers)
            background.spawn(redactor.run(), "redaction jobs")
        webhooks.start()
        try:
            yield
        finally:
            await webhooks.close()
            await background.close()
            await uploads.close()
            await chat.close()


def _one_node(cluster: Any, name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> Coroutine[Any, Any, None]:
    """A background job that must not run on two nodes at once (it sends messages,
    or disposes of records): under the cluster's lease when there is a cluster."""
    return cluster.singleton(name, job) if cluster is not None else job()


async def _queue_changed(incidents: Any, board: Any) -> None:
    """Another node changed an incident: this node's queue view reads it again and
    its boards are pushed the new queue."""
    incidents.view.changed()
    board.changed()


async def _end_board_sessions(board: Any, message: dict[str, Any]) -> None:
    await board.end_sessions(message["sessions"], message["message"])


async def shutdown(app: web.Application) -> None:
    """``on_shutdown``: end the calls (their sockets and recordings) before the
    services they use stop."""
    if HUB in app:
        await app[HUB].shutdown()
    if QUEUE_BOARD in app:
        await app[QUEUE_BOARD].close()
    if RECORDINGS in app:
        await app[RECORDINGS].shutdown()
