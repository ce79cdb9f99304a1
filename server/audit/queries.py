"""Searching the audit log (records staff's ``/api/audit`` and its CSV export)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import AuditEntry


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
