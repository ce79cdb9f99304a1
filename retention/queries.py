"""What the retention service shows: the due list, an item, a consultation's class,
legal holds and disposal certificates. Read-only but for creating a missing schedule
row (:meth:`ScheduleQueries.item`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, AsyncIterator, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import and_, func, or_, select

from evr.audit import signature_ok
from evr.db import (
    DisposalCertificate,
    EvidenceItem,
    Recording,
    RetentionAssignment,
    RetentionHold,
    RetentionItem,
    RetentionReview,
)
from evr.timeutil import rfc3339

from .policy import UNCLASSIFIED
from .schedule import RetentionError, Schedule, ScheduleRow, begin_write, live, schedule_row, schedule_select


class ScheduleQueries(Schedule):
    """The reading side of :class:`evr.retention.service.Retention`."""

    async def due(self, before: Optional[datetime] = None, limit: Optional[int] = None,
                  after: Optional[tuple[datetime, str]] = None) -> list[ScheduleRow]:
        """Items due for review or disposal by ``before`` (default now), soonest first,
        held ones included (and marked). ``after`` is a (due_at, item_id) keyset cursor."""
        before = before or self.clock()
        query = schedule_select().where(live(), RetentionItem.due_at <= before)
        if after is not None:
            query = query.where(or_(RetentionItem.due_at > after[0],
                                    and_(RetentionItem.due_at == after[0], RetentionItem.item_id > after[1])))
        query = query.order_by(RetentionItem.due_at, RetentionItem.item_id)
        if limit is not None:
            query = query.limit(limit)
        async with self.db() as db:
            return [schedule_row(r) for r in await db.execute(query)]

    async def count_due(self, before: Optional[datetime] = None) -> int:
        """How many items :meth:`due` lists by ``before`` (default now)."""
        before = before or self.clock()
        async with self.db() as db:
            return await db.scalar(select(func.count()).select_from(RetentionItem)
                                   .where(live(), RetentionItem.due_at <= before)) or 0

    async def stream_due(self, before: Optional[datetime] = None) -> AsyncIterator[ScheduleRow]:
        """The whole due list, in pages (for the CSV export and the command line)."""
        cursor = None
        while True:
            page = await self.due(before, 5000, cursor)
            for row in page:
                yield row
            if len(page) < 5000:
                return
            cursor = page[-1].due_key()

    async def items_of(self, consultation_id: str) -> list[ScheduleRow]:
        async with self.db() as db:
            rows = await db.execute(schedule_select().where(RetentionItem.consultation_id == consultation_id)
                                    .order_by(EvidenceItem.created_at))
            return [schedule_row(r) for r in rows]

    async def item(self, item_id: str) -> dict[str, Any]:
        """Everything the records console shows of an item (content excluded)."""
        async with self.db() as db:
            await begin_write(db)
            found = await db.scalar(select(EvidenceItem).where(EvidenceItem.id == item_id))
            if found is None:
                raise RetentionError(404, "not_found", "No such evidence item.")
            await self._ensure_rows(db, [item_id])
            await db.commit()
            row = (await db.execute(schedule_select().where(RetentionItem.item_id == item_id))).one()
            reviews = list(await db.scalars(select(RetentionReview).where(RetentionReview.item_id == item_id)
                                            .order_by(RetentionReview.id)))
            holds = list(await db.scalars(select(RetentionHold).where(
                RetentionHold.target.in_((item_id, found.consultation_id))).order_by(RetentionHold.id)))
            cert = await db.scalar(select(DisposalCertificate).where(DisposalCertificate.item_id == item_id))
            recording = await db.get(Recording, item_id) if found.kind == "recording" else None
        schedule = schedule_row(row)
        keys = [] if schedule.state == "disposed" else await self.store.keys(found.prefix)
        return {
            **schedule.json(),
            "prefix": found.prefix,
            "rule_label": self._label(schedule.rule),
            "classification": recording.classification if recording else None,
            "reviews": [review_json(r) for r in reviews],
            "holds": [hold_json(h) for h in holds],
            "certificate": certificate_json(cert) if cert else None,
            "objects": keys,
            # Due for disposal now and free of holds (what the console's Dispose button needs).
            "disposable": bool(schedule.state in ("active", "waiting") and schedule.action == "dispose"
                               and schedule.due_at and schedule.due_at <= self.clock() and not schedule.held),
        }

    def _label(self, rule: str) -> str:
        cls = self.policy.classes.get(rule)
        return f"{cls.label}: {cls.describe()}" if cls else "No retention class (an officer sets one)"

    async def assignment(self, consultation_id: str) -> dict[str, Any]:
        async with self.db() as db:
            found = await db.get(RetentionAssignment, consultation_id)
        name = found.retention_class if found else self.policy.default_class
        return {
            "consultation_id": consultation_id,
            "class": name,
            "label": self._label(name) if name else self._label(UNCLASSIFIED),
            "set": found is not None,
            "reason": found.reason if found else None,
            "set_by": found.set_by if found else None,
            "set_at": rfc3339(found.set_at) if found else None,
            "subject_dob_given": bool(found and found.subject_dob),
            "classes": [{"name": c.name, "label": c.label, "rule": c.describe()} for c in self.policy.case_classes()],
        }

    async def holds(self, active: bool = True, limit: int = 500) -> list[dict[str, Any]]:
        """Legal holds, newest first (only those in force unless ``active`` is False)."""
        query = select(RetentionHold)
        if active:
            query = query.where(RetentionHold.released_at.is_(None))
        async with self.db() as db:
            return [hold_json(h) for h in await db.scalars(query.order_by(RetentionHold.id.desc()).limit(limit))]

    async def certificates(self, consultation_id: Optional[str] = None, item_id: Optional[str] = None,
                           before: Optional[datetime] = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(DisposalCertificate)
        if consultation_id:
            query = query.where(DisposalCertificate.consultation_id == consultation_id)
        if item_id:
            query = query.where(DisposalCertificate.item_id == item_id)
        if before:
            query = query.where(DisposalCertificate.disposed_at < before)
        async with self.db() as db:
            rows = await db.scalars(query.order_by(DisposalCertificate.disposed_at.desc(),
                                                   DisposalCertificate.id).limit(limit))
            return [certificate_json(c) for c in rows]

    async def certificate(self, cert_id: str) -> dict[str, Any]:
        async with self.db() as db:
            found = await db.get(DisposalCertificate, cert_id)
        if found is None:
            raise RetentionError(404, "not_found", "No such disposal certificate.")
        return certificate_json(found)



def review_json(r: RetentionReview) -> dict[str, Any]:
    return {"id": r.id, "item_id": r.item_id, "at": rfc3339(r.at), "reviewer": r.reviewer, "role": r.role,
            "decision": r.decision, "reason": r.reason, "criteria": r.criteria, "rule": r.rule,
            "next_review_at": rfc3339(r.next_review_at)}


def hold_json(h: RetentionHold) -> dict[str, Any]:
    return {"id": h.id, "scope": h.scope, "target": h.target, "reason": h.reason, "placed_by": h.placed_by,
            "placed_at": rfc3339(h.placed_at), "released_at": rfc3339(h.released_at), "released_by": h.released_by,
            "release_reason": h.release_reason, "active": h.released_at is None}


def certificate_json(c: DisposalCertificate) -> dict[str, Any]:
    return {"id": c.id, "item_id": c.item_id, "consultation_id": c.consultation_id,
            "disposed_at": rfc3339(c.disposed_at), "certificate": json.loads(c.document),
            "key_fingerprint": c.key_fingerprint, "signature": c.signature}


def verify_certificate(document: str, signature: str, key: Ed25519PublicKey) -> bool:
    """True when ``signature`` is this service's signature of the certificate's JSON."""
    return signature_ok(document.encode(), signature, key)
