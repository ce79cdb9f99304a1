"""The audit log (DPA 2018 s.62): append-only, each entry hash-chained to the one before.

Every collection, view, download, export, disclosure, alteration and erasure of
evidence or personal data is appended here with who, role, what, which object, why
and from where. An entry's ``hash`` is the SHA-256 of its canonical JSON (which
includes the previous entry's hash), so editing, removing or reordering any row
breaks the chain from that row on; :func:`verify_chain` names the first bad entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Optional

from aiohttp import web
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .db import AuditEntry
from .timeutil import Clock, rfc3339

GENESIS = "0" * 64
#: An arbitrary constant: the PostgreSQL advisory lock that serialises appends.
_PG_LOCK = 0x45565241


@dataclass(frozen=True)
class Actor:
    """Who did something, and from where."""

    name: str
    role: str
    client: Optional[str] = None

    @classmethod
    def system(cls) -> "Actor":
        return cls("system", "system")


def client_address(request: web.Request) -> Optional[str]:
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
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    """Appends entries, one at a time, each chained to the newest one."""

    def __init__(self, db_factory: async_sessionmaker, clock: Clock) -> None:
        self.db_factory = db_factory
        self.clock = clock
        self._lock = asyncio.Lock()

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
        async with self._lock, self.db_factory() as db:
            if db.bind.dialect.name == "postgresql":
                # Several processes may share one database: serialise the chain there.
                await db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
            last = await db.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))
            # Microseconds only: what both databases keep, so the hash survives a round trip.
            at = self.clock().astimezone(timezone.utc)
            entry = AuditEntry(
                id=(last.id + 1) if last else 1,
                at=at,
                actor=actor.name[:64],
                role=actor.role[:16],
                action=action,
                object=object[:128],
                consultation_id=consultation_id,
                reason=reason,
                client=(actor.client or None) and actor.client[:64],
                details=details or {},
                prev_hash=last.hash if last else GENESIS,
            )
            entry.hash = entry_hash(entry)
            db.add(entry)
            await db.commit()
            return entry


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


async def verify_chain(db: AsyncSession) -> tuple[int, Optional[str]]:
    """Check the whole chain: (entries checked, the first problem or None)."""
    prev = GENESIS
    expected_id = 1
    count = 0
    async for entry in iter_entries(db):
        count += 1
        if entry.id != expected_id:
            return count, f"entry {expected_id} is missing (next is {entry.id})"
        if entry.prev_hash != prev:
            return count, f"entry {entry.id} does not follow entry {entry.id - 1} (chain broken)"
        if entry_hash(entry) != entry.hash:
            return count, f"entry {entry.id} was altered (its hash does not match its content)"
        prev = entry.hash
        expected_id += 1
    return count, None


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {**_fields(entry), "at": rfc3339(entry.at), "hash": entry.hash}
