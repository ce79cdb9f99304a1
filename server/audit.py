"""The audit log (DPA 2018 s.62): append-only, each entry hash-chained to the one before.

Every collection, view, download, export, disclosure, alteration and erasure of
evidence or personal data is appended here with who, role, what, which object, why
and from where. An entry's ``hash`` is the SHA-256 of its canonical JSON (which
includes the previous entry's hash), so editing, removing or reordering any row
breaks the chain from that row on; :func:`verify_log` names the first bad entry.

A chain alone cannot show that its newest entries were cut off, nor that the whole
log was rewritten with fresh hashes. So the service signs **checkpoints** with its
Ed25519 key: (the newest entry's id, its hash), every ``audit_checkpoint_every``
entries, on each scheduled sweep and when a process that appended stops. Each is kept
in the database and, add-only, in the evidence store (``audit/checkpoints/``), where
nobody with only database access can remove it. :func:`verify_log` checks every
signature and that every checkpointed entry is still there with the signed hash.

Nothing in the service deletes or updates an audit row: there is no API for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .db import AuditCheckpoint, AuditEntry
from .integrity import GENESIS, canonical
from .keys import fingerprint
from .timeutil import Clock, rfc3339

if TYPE_CHECKING:
    from aiohttp import web

    from .evidence import EvidenceStore

log = logging.getLogger(__name__)

#: An arbitrary constant: the PostgreSQL advisory lock that serialises appends.
_PG_LOCK = 0x45565241
#: Where checkpoints are kept in the evidence store (add-only; Object Lock on S3).
CHECKPOINT_PREFIX = "audit/checkpoints/"
DEFAULT_CHECKPOINT_EVERY = 1000


@dataclass(frozen=True)
class Actor:
    """Who did something, and from where."""

    name: str
    role: str
    client: Optional[str] = None

    @classmethod
    def system(cls) -> "Actor":
        return cls("system", "system")


def client_address(request: "web.Request") -> Optional[str]:
    return request.remote


def _stamp(value: datetime) -> str:
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


def _fields(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action,
        "object": entry.object,
        "consultation_id": entry.consultation_id,
        "reason": entry.reason,
        "client": entry.client,
        "details": entry.details or {},
    }


def entry_hash(entry: AuditEntry) -> str:
    """SHA-256 of the entry's canonical JSON (every field but ``hash``)."""
    body = {**_fields(entry), "at": _stamp(entry.at), "prev_hash": entry.prev_hash}
    return hashlib.sha256(canonical(body)).hexdigest()


def checkpoint_document(cp: AuditCheckpoint) -> dict[str, Any]:
    """What a checkpoint's signature covers."""
    return {"type": "evr.audit_checkpoint", "version": 1, "id": cp.id, "at": _stamp(cp.at),
            "last_id": cp.last_id, "last_hash": cp.last_hash}


def checkpoint_json(cp: AuditCheckpoint) -> dict[str, Any]:
    return {**checkpoint_document(cp), "key_fingerprint": cp.key_fingerprint, "signature": cp.signature}


class Appender:
    """Appends entries inside one database transaction (see :meth:`AuditLog.transaction`)."""

    def __init__(self, db: AsyncSession, clock: Clock, last: Optional[AuditEntry]) -> None:
        self.db = db
        self.clock = clock
        self.first_id = (last.id + 1) if last else 1
        self.last_id = last.id if last else 0
        self.last_hash = last.hash if last else GENESIS
        self.entries: list[AuditEntry] = []

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
    if db.bind.dialect.name == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
    elif db.bind.dialect.name == "sqlite":
        # The write lock now, not at the first INSERT: no other writer reads the same tail.
        await db.execute(text("BEGIN IMMEDIATE"))


class AuditLog:
    """Appends entries, one at a time or in a transaction, each chained to the newest.

    With a signing key attached (:meth:`attach`), it signs a checkpoint every
    ``checkpoint_every`` entries in the transaction that reaches it, and on
    :meth:`checkpoint`.
    """

    def __init__(
        self,
        db_factory: async_sessionmaker,
        clock: Clock,
        signing_key: Optional[Ed25519PrivateKey] = None,
        store: Optional["EvidenceStore"] = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        self.db_factory = db_factory
        self.clock = clock
        self.signing_key = signing_key
        self.store = store
        self.checkpoint_every = checkpoint_every
        self._lock = asyncio.Lock()

    def attach(self, signing_key: Ed25519PrivateKey, store: Optional["EvidenceStore"],
               checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> None:
        if checkpoint_every < 1:
            raise ValueError("audit_checkpoint_every must be at least 1")
        self.signing_key, self.store, self.checkpoint_every = signing_key, store, checkpoint_every

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

    async def record(
        self,
        actor: Actor,
        action: str,
        object: str,
        *,
        consultation_id: Optional[str] = None,
        reason: Optional[str] = None,
        details: Optional[dict[str, Any]] = None,
    ) -> AuditEntry:
        async with self.transaction() as appender:
            return appender.add(actor, action, object, consultation_id=consultation_id, reason=reason,
                                details=details)

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


# -- reading -------------------------------------------------------------------


async def iter_entries(db: AsyncSession, batch: int = 5000) -> AsyncIterator[AuditEntry]:
    after = 0
    while True:
        rows = list(
            await db.scalars(select(AuditEntry).where(AuditEntry.id > after).order_by(AuditEntry.id).limit(batch))
        )
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].id


@dataclass
class Verification:
    """What :func:`verify_log` found."""

    entries: int = 0
    checkpoints: int = 0
    #: The first problem (naming the entry or checkpoint), or None when intact.
    problem: Optional[str] = None
    #: The newest entry a valid signed checkpoint covers (0 when none).
    signed_through: int = 0
    #: Checkpoints kept in the store (``None`` when no store was given).
    kept: Optional[int] = None
    notes: list[str] = field(default_factory=list)


def signature_ok(message: bytes, signature: str, key: Ed25519PublicKey) -> bool:
    """True when ``signature`` (hex) is ``key``'s signature of ``message``."""
    try:
        key.verify(bytes.fromhex(signature), message)
        return True
    except (InvalidSignature, ValueError):
        return False


def _signature_ok(doc: dict[str, Any], signature: str, key: Ed25519PublicKey) -> bool:
    return signature_ok(canonical(doc), signature, key)


async def _kept_checkpoints(store: "EvidenceStore") -> dict[int, dict[str, Any]]:
    kept: dict[int, dict[str, Any]] = {}
    for key in await store.keys(CHECKPOINT_PREFIX):
        try:
            doc = json.loads(await store.read_bytes(key))
            kept[int(doc["id"])] = doc
        except (ValueError, KeyError, TypeError):
            kept[-len(kept) - 1] = {"unreadable": key}
    return kept


async def verify_log(
    db: AsyncSession, public_key: Optional[Ed25519PublicKey] = None, store: Optional["EvidenceStore"] = None
) -> Verification:
    """Check the whole chain and every checkpoint; name the first problem.

    Without ``public_key`` the checkpoints' signatures are not checked (only that the
    entries they name still carry the hashes they recorded)."""
    result = Verification()
    problems: list[str] = []
    # Every checkpoint, from the database and from the store: last_id -> (hash, name).
    expected: dict[int, tuple[str, str]] = {}
    rows = list(await db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))
    result.checkpoints = len(rows)
    in_db = {}
    for cp in rows:
        doc = checkpoint_document(cp)
        in_db[cp.id] = (doc, cp.signature)
        if public_key is not None and not _signature_ok(doc, cp.signature, public_key):
            problems.append(f"checkpoint {cp.id} (entry {cp.last_id}) does not carry a valid signature "
                            f"of this service's key (altered or forged)")
            continue
        expected[cp.last_id] = (cp.last_hash, f"signed checkpoint {cp.id}")
    if store is not None:
        kept = await _kept_checkpoints(store)
        result.kept = len(kept)
        for cid, doc in sorted(kept.items()):
            if "unreadable" in doc:
                problems.append(f"the kept checkpoint {doc['unreadable']} is unreadable")
                continue
            signed = {k: doc.get(k) for k in ("type", "version", "id", "at", "last_id", "last_hash")}
            if public_key is not None and not _signature_ok(signed, str(doc.get("signature", "")), public_key):
                problems.append(f"the kept copy of checkpoint {cid} does not carry a valid signature")
                continue
            if cid not in in_db:
                problems.append(f"checkpoint {cid} (entry {signed['last_id']}) is kept in the evidence store "
                                f"but missing from the database")
            elif in_db[cid][0] != signed:
                problems.append(f"checkpoint {cid} in the database differs from its kept copy")
            expected.setdefault(int(signed["last_id"]), (str(signed["last_hash"]), f"signed checkpoint {cid}"))
    result.signed_through = max(expected, default=0)

    prev = GENESIS
    expected_id = 1
    async for entry in iter_entries(db):
        result.entries += 1
        if entry.id != expected_id:
            result.problem = f"entry {expected_id} is missing (next is {entry.id})"
            return result
        if entry.prev_hash != prev:
            result.problem = f"entry {entry.id} does not follow entry {entry.id - 1} (chain broken)"
            return result
        if entry_hash(entry) != entry.hash:
            result.problem = f"entry {entry.id} was altered (its hash does not match its content)"
            return result
        if entry.id in expected and expected[entry.id][0] != entry.hash:
            result.problem = (f"entry {entry.id} differs from {expected[entry.id][1]} "
                              f"(the log was rewritten up to here)")
            return result
        prev = entry.hash
        expected_id += 1
    last = expected_id - 1
    if result.signed_through > last:
        _, name = expected[result.signed_through]
        result.problem = (f"entry {last + 1} is missing: {name} covers entries up to {result.signed_through} "
                          f"but the log ends at {last} (its tail was cut)")
        return result
    if problems:
        result.problem = problems[0]
        return result
    if last > result.signed_through:
        result.notes.append(f"entries {result.signed_through + 1}-{last} follow the newest signed checkpoint")
    return result


async def verify_chain(db: AsyncSession) -> tuple[int, Optional[str]]:
    """Check the whole chain: (entries checked, the first problem or None)."""
    result = await verify_log(db)
    return result.entries, result.problem


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {**_fields(entry), "at": rfc3339(entry.at), "hash": entry.hash}


# -- searching -----------------------------------------------------------------


@dataclass
class AuditQuery:
    """Filters of :func:`search` (all optional, combined with AND)."""

    object: Optional[str] = None
    consultation_id: Optional[str] = None
    actor: Optional[str] = None
    #: An exact action, or a family ending in ``.`` (``retention.``).
    action: Optional[str] = None
    since: Optional[datetime] = None
    until: Optional[datetime] = None
    #: Keyset cursor: entries after (ascending) or before (descending) this id.
    cursor: Optional[int] = None
    descending: bool = False
    limit: int = 100


async def search(db: AsyncSession, q: AuditQuery) -> list[AuditEntry]:
    query = select(AuditEntry)
    if q.object:
        query = query.where(AuditEntry.object == q.object)
    if q.consultation_id:
        query = query.where(AuditEntry.consultation_id == q.consultation_id)
    if q.actor:
        query = query.where(AuditEntry.actor == q.actor)
    if q.action:
        if q.action.endswith("."):
            query = query.where(AuditEntry.action.startswith(q.action, autoescape=True))
        else:
            query = query.where(AuditEntry.action == q.action)
    if q.since:
        query = query.where(AuditEntry.at >= q.since)
    if q.until:
        query = query.where(AuditEntry.at < q.until)
    if q.cursor is not None:
        query = query.where(AuditEntry.id < q.cursor if q.descending else AuditEntry.id > q.cursor)
    order = AuditEntry.id.desc() if q.descending else AuditEntry.id
    return list(await db.scalars(query.order_by(order).limit(q.limit)))
