"""Appending to the audit log, and signing its checkpoints.

Appends are serialised across processes (a database-wide lock in the transaction),
so ``evr serve`` and a command line tool never fork the chain; a change and its audit
entries commit together in :meth:`AuditLog.transaction`, or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from datetime import timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db import AuditCheckpoint, AuditEntry
from ..integrity import GENESIS, canonical
from ..keys import fingerprint
from ..timeutil import Clock
from .entries import CHECKPOINT_PREFIX, Actor, checkpoint_document, checkpoint_json, entry_hash

if TYPE_CHECKING:
    from ..evidence import EvidenceStore

log = logging.getLogger(__name__)

#: An arbitrary constant: the PostgreSQL advisory lock that serialises appends.
_PG_LOCK = 0x45565241
DEFAULT_CHECKPOINT_EVERY = 1000


class Appender:
    """Appends entries inside one database transaction (see :meth:`AuditLog.transaction`)."""

    def __init__(self, db: AsyncSession, clock: Clock, last: Optional[AuditEntry]) -> None:
        self.db = db
        self.clock = clock
        self.first_id = (last.id + 1) if last else 1
        self.last_id = last.id if last else 0
        self.last_hash = last.hash if last else GENESIS
        self.entries: list[AuditEntry] = []
        #: Run once the transaction has committed (never when it rolls back).
        self.committed: list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after the transaction commits: to announce a change,
        which must not be seen before it is kept (nor when it is not)."""
        if callback not in self.committed:
            self.committed.append(callback)

    def add(
        self,
        actor: Actor,
        action: str,
        object: str,
        *,
        consultation_id: Optional[str] = None,
        reason: Optional[str] = None,
        details: Optional[dict[str, Any]] = None,
    ) -> AuditEntry:
        entry = AuditEntry(
            id=self.last_id + 1,
            # Microseconds only: what both databases keep, so the hash survives a round trip.
            at=self.clock().astimezone(timezone.utc),
            actor=actor.name[:64],
            role=actor.role[:16],
            action=action[:48],
            object=object[:128],
            consultation_id=consultation_id,
            reason=reason,
            client=(actor.client or None) and actor.client[:64],
            details=details or {},
            prev_hash=self.last_hash,
        )
        entry.hash = entry_hash(entry)
        self.db.add(entry)
        self.entries.append(entry)
        self.last_id, self.last_hash = entry.id, entry.hash
        return entry


async def _serialise(db: AsyncSession) -> None:
    """Take the database-wide append lock for this transaction, so several processes
    (``evr serve`` and a CLI command) never fork the chain."""
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
    elif dialect == "sqlite":
        # The write lock now, not at the first INSERT: no other writer reads the same tail.
        await db.execute(text("BEGIN IMMEDIATE"))


class AuditLog:
    """Appends entries, one at a time or in a transaction, each chained to the newest.

    With a signing key (given at birth, by :func:`evr.services.services` and the
    command line), it signs a checkpoint every ``checkpoint_every`` entries in the
    transaction that reaches it, and on :meth:`checkpoint`.
    """

    def __init__(
        self,
        db_factory: async_sessionmaker,
        clock: Clock,
        signing_key: Optional[Ed25519PrivateKey] = None,
        store: Optional["EvidenceStore"] = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("audit_checkpoint_every must be at least 1")
        self.db_factory = db_factory
        self.clock = clock
        self.signing_key = signing_key
        self.store = store
        self.checkpoint_every = checkpoint_every
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Appender]:
        """One transaction holding the append lock: do other writes on ``appender.db``
        and append with ``appender.add(...)``; all of it commits together, or none."""
        written: list[AuditCheckpoint] = []
        async with self._lock, self.db_factory() as db:
            await _serialise(db)
            last = await db.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))
            appender = Appender(db, self.clock, last)
            yield appender
            every = self.checkpoint_every
            if self.signing_key is not None and appender.entries and (
                (appender.first_id - 1) // every != appender.last_id // every
            ):
                written.append(await self._sign(db, appender.last_id, appender.last_hash))
            await db.commit()
        for cp in written:
            await self._keep(cp)
        for callback in appender.committed:
            try:
                callback()
            except Exception:  # noqa: BLE001 - the change is kept; a failed announcement is only logged
                log.exception("an announcement after a commit failed")

    async def record(self, actor: Actor, action: str, object: str, **fields: Any) -> AuditEntry:
        """One entry in a transaction of its own: :meth:`Appender.add`'s arguments.
        (A change and its entry go through :meth:`transaction` together instead.)"""
        async with self.transaction() as appender:
            return appender.add(actor, action, object, **fields)

    async def checkpoint(self) -> Optional[AuditCheckpoint]:
        """Sign the newest entry when no checkpoint covers it yet (at a sweep, at exit)."""
        if self.signing_key is None:
            return None
        async with self.db_factory() as db:  # the usual case first, without the lock
            newest = await db.scalar(select(func.max(AuditEntry.id)))
            covered = await db.scalar(select(func.max(AuditCheckpoint.last_id)))
        if newest is None or (covered is not None and covered >= newest):
            return None
        async with self._lock, self.db_factory() as db:
            await _serialise(db)
            last = await db.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))
            covered = await db.scalar(select(func.max(AuditCheckpoint.last_id)))
            if last is None or (covered is not None and covered >= last.id):
                return None
            cp = await self._sign(db, last.id, last.hash)
            await db.commit()
        await self._keep(cp)
        return cp

    async def _sign(self, db: AsyncSession, last_id: int, last_hash: str) -> AuditCheckpoint:
        assert self.signing_key is not None
        newest = await db.scalar(select(func.max(AuditCheckpoint.id)))
        cp = AuditCheckpoint(id=(newest or 0) + 1, at=self.clock().astimezone(timezone.utc),
                             last_id=last_id, last_hash=last_hash,
                             key_fingerprint=fingerprint(self.signing_key.public_key()))
        cp.signature = self.signing_key.sign(canonical(checkpoint_document(cp))).hex()
        db.add(cp)
        return cp

    async def _keep(self, cp: AuditCheckpoint) -> None:
        """A copy outside the database, in the add-only store."""
        if self.store is None:
            return
        try:
            await self.store.add_bytes(f"{CHECKPOINT_PREFIX}{cp.id:010d}.json", canonical(checkpoint_json(cp)))
        except Exception:  # the database copy stands; the next checkpoint is kept again
            log.exception("could not keep audit checkpoint %d in the evidence store", cp.id)
