"""What records staff and officers change: a consultation's class, reviews, legal
holds, and reading an item's content with a reason. Each change recomputes the rows
it touches and is audited in the same transaction (:meth:`evr.audit.AuditLog.transaction`)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, AsyncIterator, Optional, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from evr.audit import Actor
from evr.db import (
    Consultation,
    EvidenceItem,
    Recording,
    RetentionAssignment,
    RetentionHold,
    RetentionItem,
    RetentionReview,
)
from evr.errors import checked_reason
from evr.timeutil import rfc3339

from .policy import ASSESSMENT_CRITERIA, DECISIONS
from .queries import ScheduleQueries, hold_json, review_json
from .schedule import RetentionError, audit_object


def _reason(reason: Optional[str]) -> str:
    """A reason kept in the audit log, checked before anything is written."""
    return checked_reason(reason)



class Commands(ScheduleQueries):
    """The changing side of :class:`evr.retention.service.Retention` (each change
    answers with what the queries show)."""

    async def set_class(self, who: Actor, consultation_id: str, name: str, reason: str,
                        subject_dob: Optional[date] = None) -> dict[str, Any]:
        """An officer or sergeant classifies a consultation; its items follow."""
        reason = _reason(reason)
        if name not in {c.name for c in self.policy.case_classes()}:
            choices = ", ".join(c.name for c in self.policy.case_classes())
            raise RetentionError(422, "unknown_class", f"The retention class must be one of {choices}.")
        if subject_dob is not None and not date(1900, 1, 1) <= subject_dob <= self.clock().date():
            raise RetentionError(422, "invalid_dob", "The date of birth must be a past date after 1900.")
        async with self.audit.transaction() as ap:
            db = ap.db
            if await db.get(Consultation, consultation_id) is None:
                raise RetentionError(404, "not_found", "No such consultation.")
            found = await db.get(RetentionAssignment, consultation_id)
            old = found.retention_class if found else None
            if found is None:
                found = RetentionAssignment(consultation_id=consultation_id)
                db.add(found)
            found.retention_class, found.reason, found.set_by, found.set_at = name, reason, who.name, self.clock()
            if subject_dob is not None:
                found.subject_dob = subject_dob
            await db.flush()
            ids = list(await db.scalars(select(EvidenceItem.id).where(EvidenceItem.consultation_id == consultation_id)))
            await self._recompute(db, ids)
            # The date of birth itself stays out of the audit log (which is never erased).
            ap.add(who, "retention.class_set", f"consultation:{consultation_id}", consultation_id=consultation_id,
                   reason=reason, details={"from": old, "to": name, "subject_dob_given": subject_dob is not None,
                                           "items": len(ids)})
        return await self.assignment(consultation_id)

    async def _targets(self, db: AsyncSession, target: str) -> tuple[str, str, list[EvidenceItem]]:
        """An item id or a consultation id: (scope, consultation id, its items)."""
        try:
            uuid.UUID(target)
        except (ValueError, TypeError, AttributeError):
            raise RetentionError(404, "not_found", f"{target!r} is not an item or consultation id.") from None
        item = await db.get(EvidenceItem, target)
        if item is not None:  # with the redacted copies made from it: they go with their original
            copies = list(await db.scalars(select(EvidenceItem).join(Recording, Recording.id == EvidenceItem.id)
                                           .where(Recording.source_recording_id == item.id)
                                           .order_by(EvidenceItem.id)))
            return "item", item.consultation_id, [item, *copies]
        if await db.get(Consultation, target) is not None:
            items = list(await db.scalars(select(EvidenceItem).where(EvidenceItem.consultation_id == target)))
            return "consultation", target, items
        raise RetentionError(404, "not_found", f"No evidence item or consultation {target}.")

    async def review(self, who: Actor, target: str, decision: str, reason: str,
                     next_review: Optional[datetime] = None, criteria: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Record a review of an item (or of every live item of a consultation)."""
        reason = _reason(reason)
        if decision not in DECISIONS:
            raise RetentionError(422, "invalid_decision", "The decision must be retain or dispose.")
        unknown = sorted(set(criteria) - set(ASSESSMENT_CRITERIA))
        if unknown:
            raise RetentionError(422, "invalid_criteria", f"Unknown assessment criteria: {', '.join(unknown)} "
                                 f"(known: {', '.join(ASSESSMENT_CRITERIA)}).")
        now = self.clock()
        if decision == "dispose" and next_review is not None:
            raise RetentionError(422, "invalid_next_review", "A decision to dispose takes no next review date.")
        if next_review is not None and next_review <= now:
            raise RetentionError(422, "invalid_next_review", "The next review must be in the future.")
        async with self.audit.transaction() as ap:
            db = ap.db
            scope, consultation_id, items = await self._targets(db, target)
            await self._ensure_rows(db, [i.id for i in items])
            rows = {r.item_id: r for r in await db.scalars(
                select(RetentionItem).where(RetentionItem.item_id.in_([i.id for i in items])))}
            live = [i for i in items if rows[i.id].state == "active"]
            if not live:
                raise RetentionError(409, "not_reviewable",
                                     "Nothing to review: the item is disposed or being disposed." if scope == "item"
                                     else "The consultation has no item left to review.")
            done = []
            for item in live:
                row = rows[item.id]
                upcoming = next_review or (self.policy.next_review(row.rule, now) if decision == "retain" else None)
                review = RetentionReview(item_id=item.id, at=now, reviewer=who.name, role=who.role[:16],
                                         decision=decision, reason=reason, criteria=sorted(set(criteria)),
                                         rule=row.rule, next_review_at=upcoming)
                db.add(review)
                row.review_decision, row.reviewed_at, row.next_review_at = decision, now, upcoming
                await db.flush()
                ap.add(who, "retention.review", audit_object(item.kind, item.id), consultation_id=consultation_id,
                       reason=reason, details={"review": review.id, "decision": decision, "rule": row.rule,
                                               "criteria": review.criteria, "next_review": rfc3339(upcoming)})
                done.append(review)
            await self._update(db, await self._compute(db, [r.item_id for r in done]))
        return [review_json(r) for r in done]

    async def hold(self, who: Actor, target: str, reason: str) -> dict[str, Any]:
        """A legal hold on an item or a consultation (present and future items)."""
        reason = _reason(reason)
        async with self.audit.transaction() as ap:
            db = ap.db
            scope, consultation_id, items = await self._targets(db, target)
            existing = await db.scalar(select(RetentionHold).where(RetentionHold.target == target,
                                                                   RetentionHold.released_at.is_(None)))
            if existing is not None:
                raise RetentionError(409, "already_held", f"A legal hold (hold {existing.id}, placed by "
                                     f"{existing.placed_by}) already covers this {scope}.")
            hold = RetentionHold(scope=scope, target=target, reason=reason, placed_by=who.name, placed_at=self.clock())
            db.add(hold)
            await db.flush()
            await self._recompute(db, [i.id for i in items])
            obj = audit_object(items[0].kind, target) if scope == "item" else f"consultation:{target}"
            ap.add(who, "retention.hold", obj, consultation_id=consultation_id, reason=reason,
                   details={"hold": hold.id, "scope": scope, "items": len(items)})
        return hold_json(hold)

    async def release(self, who: Actor, target: str, reason: str) -> list[dict[str, Any]]:
        reason = _reason(reason)
        async with self.audit.transaction() as ap:
            db = ap.db
            scope, consultation_id, items = await self._targets(db, target)
            holds = list(await db.scalars(select(RetentionHold).where(RetentionHold.target == target,
                                                                      RetentionHold.released_at.is_(None))))
            if not holds:
                raise RetentionError(409, "not_held", f"No legal hold is placed on this {scope}.")
            for hold in holds:
                hold.released_at, hold.released_by, hold.release_reason = self.clock(), who.name, reason
            await db.flush()
            await self._recompute(db, [i.id for i in items])
            obj = audit_object(items[0].kind, target) if scope == "item" else f"consultation:{target}"
            ap.add(who, "retention.release", obj, consultation_id=consultation_id, reason=reason,
                   details={"holds": [h.id for h in holds], "scope": scope, "items": len(items)})
        return [hold_json(h) for h in holds]

    # -- content, opened with a reason -------------------------------------------

    async def open_content(self, who: Actor, item_id: str, key: str, reason: str) -> AsyncIterator[bytes]:
        """An item's stored object, for records staff: logged with the reason first."""
        reason = _reason(reason)
        async with self.db() as db:
            item = await db.get(EvidenceItem, item_id)
            row = await db.get(RetentionItem, item_id)
        if item is None:
            raise RetentionError(404, "not_found", "No such evidence item.")
        if row is not None and row.state == "disposed":
            raise RetentionError(410, "disposed", "This item was disposed of; only its certificate remains.")
        try:
            found = key.startswith(item.prefix) and await self.store.exists(key)
        except ValueError:  # not a well-formed key ('..', a folder...): the store's check_key
            found = False
        if not found:
            raise RetentionError(404, "not_found", "No such object in this item.")
        await self.audit.record(who, "evidence.view", audit_object(item.kind, item_id),
                                consultation_id=item.consultation_id, reason=reason, details={"object": key})
        return self.store.read(key)

