"""The retention schedule and its tools: classes, reviews, legal holds and disposal.

Every evidence item (``evidence_items``) gets a row in ``retention_items`` holding the
rule that applies to it, when it is next due and for what (review or disposal),
whether a legal hold covers it, and where its disposal stands. :meth:`Retention.refresh`
keeps those rows in step with what other parts of the service write (new items,
recordings marked evidential, a changed policy); every change made here (a class
set, a review, a hold) recomputes the rows it touches at once. The due list is then
one ordered scan of a partial index of the live items, whatever the number of items.

Disposal removes an item's content from every store (every object version), in
batches, and keeps a signed disposal certificate (what, its hash, who, when, the rule
and the decision) and an audit entry for each item. Before anything is removed, the
item's rule and holds are recomputed from their sources: a recording marked evidential
or a hold placed a moment ago stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, AsyncIterator, Iterable, Optional, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import and_, bindparam, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evr.audit import Actor, AuditLog, canonical, signature_ok
from evr.db import (
    Consultation,
    DisposalCertificate,
    EvidenceItem,
    Recording,
    RetentionAssignment,
    RetentionHold,
    RetentionItem,
    RetentionMeta,
    RetentionReview,
)
from evr.evidence.store import EvidenceStore, StillLocked
from evr.keys import fingerprint
from evr.text import plain_text
from evr.timeutil import Clock, rfc3339

from .policy import ASSESSMENT_CRITERIA, DECISIONS, NON_EVIDENTIAL, UNCLASSIFIED, Policy, ReviewState

log = logging.getLogger(__name__)

#: Items computed per transaction, and disposed of per transaction.
BATCH = 5000
DISPOSE_BATCH = 1000
#: Stores worked on at once during a disposal run.
PARALLEL = 16
#: A disposal left half-way (a crash) is taken up again after this long.
STALE_DISPOSING = timedelta(minutes=15)
#: A disposal that failed (store unreachable...) is retried after this long.
RETRY_AFTER = timedelta(hours=1)
MAX_REASON = 4000


class RetentionError(Exception):
    """A refused request: ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _reason(reason: Optional[str]) -> str:
    """A reason kept in the audit log: 422 unless it is text that can be stored,
    checked before anything is written (web and command line alike)."""
    if not isinstance(reason, str) or not reason.strip():
        raise RetentionError(422, "reason_required", "Give a reason: it is kept in the audit log.")
    if len(reason) > MAX_REASON:
        raise RetentionError(422, "reason_too_long", f"The reason is longer than {MAX_REASON} characters.")
    if not plain_text(reason):
        raise RetentionError(422, "invalid_reason", "The reason holds control characters or text that is not "
                                                    "valid Unicode.")
    return reason.strip()


def _object(kind: str, item_id: str) -> str:
    return f"{kind}:{item_id}"


# -- what the schedule reads and shows ------------------------------------------


@dataclass
class ScheduleRow:
    """An item on the schedule, with what the due list and the CSV export show."""

    item_id: str
    kind: str
    consultation_id: str
    cad_ref: str
    rule: str
    due_at: Optional[datetime]
    action: str
    state: str
    held: bool
    sha256: Optional[str]
    size: int
    created_at: datetime
    prefix: str = ""
    waiting_until: Optional[datetime] = None

    def json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id, "kind": self.kind, "consultation_id": self.consultation_id,
            "cad_ref": self.cad_ref, "rule": self.rule, "due_at": rfc3339(self.due_at), "action": self.action,
            "state": self.state, "held": self.held, "sha256": self.sha256, "size": self.size,
            "created_at": rfc3339(self.created_at), "waiting_until": rfc3339(self.waiting_until),
        }

    def csv(self) -> list[str]:
        """The row of the CSV export (web and command line), with no formulas for spreadsheets."""
        data = self.json()
        return [_cell(data[c]) for c in CSV_COLUMNS]


CSV_COLUMNS = ("item_id", "kind", "consultation_id", "cad_ref", "rule", "action", "due_at", "state", "held",
               "sha256", "size", "created_at")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


_SCHEDULE_COLUMNS = (
    RetentionItem.item_id, EvidenceItem.kind, RetentionItem.consultation_id, Consultation.cad_ref,
    RetentionItem.rule, RetentionItem.due_at, RetentionItem.action, RetentionItem.state, RetentionItem.held,
    EvidenceItem.sha256, EvidenceItem.size, EvidenceItem.created_at, EvidenceItem.prefix,
)


def _schedule_select() -> Any:
    return (select(*_SCHEDULE_COLUMNS)
            .join(EvidenceItem, EvidenceItem.id == RetentionItem.item_id)
            .join(Consultation, Consultation.id == RetentionItem.consultation_id))


def _schedule_row(r: Any) -> ScheduleRow:
    # A row waiting for a store lock is due again when the lock expires.
    return ScheduleRow(r.item_id, r.kind, r.consultation_id, r.cad_ref, r.rule, r.due_at, r.action, r.state,
                       bool(r.held), r.sha256, r.size or 0, r.created_at, r.prefix,
                       r.due_at if r.state == "waiting" else None)


@dataclass
class Computed:
    """An item's rule and due date, computed from its sources."""

    item_id: str
    consultation_id: str
    rule: str
    due_at: Optional[datetime]
    action: str
    held: bool


@dataclass
class DisposalReport:
    """What a disposal run did (or, dry, would do)."""

    executed: bool
    candidates: list[ScheduleRow] = field(default_factory=list)
    disposed: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    waiting: dict[str, Optional[datetime]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    #: Items due for disposal that a legal hold keeps.
    held: int = 0
    #: Items whose sources changed since they were listed (e.g. marked evidential).
    skipped: int = 0

    def json(self) -> dict[str, Any]:
        return {
            "executed": self.executed,
            "candidates": [c.json() for c in self.candidates],
            "disposed": self.disposed, "certificates": self.certificates,
            "waiting": {k: rfc3339(v) for k, v in self.waiting.items()},
            "failed": self.failed, "held": self.held, "skipped": self.skipped,
        }


# -- the service ------------------------------------------------------------------


class Retention:
    def __init__(self, db_factory: async_sessionmaker, audit: AuditLog, store: EvidenceStore, policy: Policy,
                 clock: Clock, signing_key: Ed25519PrivateKey) -> None:
        self.db = db_factory
        self.audit = audit
        self.store = store
        self.policy = policy
        self.clock = clock
        self.key = signing_key
        self._refresh_lock = asyncio.Lock()

    # -- keeping the schedule in step -------------------------------------------

    async def refresh(self) -> int:
        """Bring the schedule up to date with its sources; return the rows written.

        Cheap when nothing changed (two counts and two indexed lookups), so every
        command and the due list call it first."""
        async with self._refresh_lock:
            written = 0
            async with self.db() as db:
                meta = await db.get(RetentionMeta, "policy")
                changed = meta is None or meta.value != self.policy.fingerprint
            if changed:
                written += await self._recompute_all()
            written += await self._add_missing()
            written += await self._follow_recordings()
            return written

    async def _recompute_all(self) -> int:
        """The policy changed (or this is the first run): recompute every live row."""
        log.info("retention policy changed: recomputing the whole schedule")
        written, after = 0, ""
        while True:
            async with self.db() as db:
                await _begin_write(db)
                ids = list(await db.scalars(
                    select(RetentionItem.item_id).where(RetentionItem.item_id > after, RetentionItem.state == "active")
                    .order_by(RetentionItem.item_id).limit(BATCH)))
                if not ids:
                    await _set_meta(db, "policy", self.policy.fingerprint)
                    await db.commit()
                    return written
                written += await self._update(db, await self._compute(db, ids))
                await db.commit()
            after = ids[-1]

    async def _add_missing(self) -> int:
        """Rows for items registered since the last refresh (checked by count first)."""
        async with self.db() as db:
            items = await db.scalar(select(func.count()).select_from(EvidenceItem))
            rows = await db.scalar(select(func.count()).select_from(RetentionItem))
        if items == rows:
            return 0
        written, after = 0, ""
        while True:
            async with self.db() as db:
                await _begin_write(db)
                ids = list(await db.scalars(
                    select(EvidenceItem.id).outerjoin(RetentionItem, RetentionItem.item_id == EvidenceItem.id)
                    .where(RetentionItem.item_id.is_(None), EvidenceItem.id > after)
                    .order_by(EvidenceItem.id).limit(BATCH)))
                if not ids:
                    return written
                written += await self._ensure_rows(db, ids)
                await db.commit()
            after = ids[-1]

    async def _follow_recordings(self) -> int:
        """Recordings marked evidential since: they leave the 31-day rule."""
        moved = (select(RetentionItem.item_id).join(Recording, Recording.id == RetentionItem.item_id)
                 .where(RetentionItem.rule == NON_EVIDENTIAL, RetentionItem.state.in_(("active", "waiting")),
                        Recording.classification != NON_EVIDENTIAL))
        async with self.db() as db:
            if await db.scalar(moved.limit(1)) is None:
                return 0  # the usual case: no write lock taken
        async with self.db() as db:
            await _begin_write(db)
            ids = list(await db.scalars(moved))
            written = 0
            for start in range(0, len(ids), BATCH):
                written += await self._update(db, await self._compute(db, ids[start:start + BATCH]))
            await db.commit()
            return written

    async def _compute(self, db: AsyncSession, ids: Sequence[str]) -> list[Computed]:
        """Each item's rule, due date and hold, from the sources."""
        if not ids:
            return []
        rows = await db.execute(
            select(EvidenceItem.id, EvidenceItem.kind, EvidenceItem.consultation_id, EvidenceItem.created_at,
                   Consultation.created_at.label("opened_at"), RetentionAssignment.retention_class,
                   RetentionAssignment.subject_dob, Recording.classification, Recording.started_at,
                   RetentionItem.review_decision, RetentionItem.reviewed_at, RetentionItem.next_review_at)
            .join(Consultation, Consultation.id == EvidenceItem.consultation_id)
            .outerjoin(RetentionAssignment, RetentionAssignment.consultation_id == EvidenceItem.consultation_id)
            .outerjoin(Recording, and_(Recording.id == EvidenceItem.id, EvidenceItem.kind == "recording"))
            .outerjoin(RetentionItem, RetentionItem.item_id == EvidenceItem.id)
            .where(EvidenceItem.id.in_(ids)))
        holds = await _active_hold_targets(db)
        out = []
        for r in rows:
            if r.classification == NON_EVIDENTIAL:
                rule, start = NON_EVIDENTIAL, r.started_at or r.created_at
            else:
                rule, start = r.retention_class or self.policy.default_class or UNCLASSIFIED, r.opened_at
            review = ReviewState(r.review_decision, r.reviewed_at, r.next_review_at) if r.review_decision else None
            due = self.policy.due(rule, start, r.subject_dob, review)
            out.append(Computed(r.id, r.consultation_id, rule, due.due_at, due.action,
                                r.id in holds or r.consultation_id in holds))
        return out

    async def _update(self, db: AsyncSession, computed: Iterable[Computed]) -> int:
        """Write computed rules to live rows (disposed ones never change again): active
        rows take the new due date; those being disposed or waiting for a store lock
        keep theirs but follow holds."""
        now = self.clock()
        values = [{"b_id": c.item_id, "b_rule": c.rule, "b_due": c.due_at, "b_action": c.action, "b_held": c.held,
                   "b_now": now} for c in computed]
        if values:
            await db.execute(_UPDATE_ACTIVE, values)
            await db.execute(_UPDATE_HELD, [{"b_id": v["b_id"], "b_held": v["b_held"]} for v in values])
        return len(values)

    async def _recompute(self, db: AsyncSession, ids: Sequence[str]) -> None:
        await self._ensure_rows(db, ids)
        await self._update(db, await self._compute(db, ids))

    async def _ensure_rows(self, db: AsyncSession, ids: Sequence[str]) -> int:
        """Rows for those of ``ids`` that have none yet (several processes may race: the
        first insert wins, the others do nothing)."""
        present = set(await db.scalars(select(RetentionItem.item_id).where(RetentionItem.item_id.in_(ids))))
        missing = await self._compute(db, [i for i in ids if i not in present])
        if missing:
            now = self.clock()
            values = [{"item_id": c.item_id, "consultation_id": c.consultation_id, "rule": c.rule,
                       "due_at": c.due_at, "action": c.action, "held": c.held, "state": "active",
                       "updated_at": now} for c in missing]
            insert = (postgresql.insert if db.bind.dialect.name == "postgresql" else sqlite.insert)(RetentionItem)
            await db.execute(insert.on_conflict_do_nothing(index_elements=["item_id"]), values)
        return len(missing)

    # -- reading ---------------------------------------------------------------

    async def due(self, before: Optional[datetime] = None, limit: Optional[int] = None,
                  after: Optional[tuple[datetime, str]] = None) -> list[ScheduleRow]:
        """Items due for review or disposal by ``before`` (default now), soonest first,
        held ones included (and marked). ``after`` is a (due_at, item_id) keyset cursor."""
        before = before or self.clock()
        query = _schedule_select().where(_live(), RetentionItem.due_at <= before)
        if after is not None:
            query = query.where(or_(RetentionItem.due_at > after[0],
                                    and_(RetentionItem.due_at == after[0], RetentionItem.item_id > after[1])))
        query = query.order_by(RetentionItem.due_at, RetentionItem.item_id)
        if limit is not None:
            query = query.limit(limit)
        async with self.db() as db:
            return [_schedule_row(r) for r in await db.execute(query)]

    async def count_due(self, before: Optional[datetime] = None) -> int:
        """How many items :meth:`due` lists by ``before`` (default now)."""
        before = before or self.clock()
        async with self.db() as db:
            return await db.scalar(select(func.count()).select_from(RetentionItem)
                                   .where(_live(), RetentionItem.due_at <= before)) or 0

    async def stream_due(self, before: Optional[datetime] = None) -> AsyncIterator[ScheduleRow]:
        """The whole due list, in pages (for the CSV export and the command line)."""
        cursor = None
        while True:
            page = await self.due(before, 5000, cursor)
            for row in page:
                yield row
            if len(page) < 5000:
                return
            cursor = (page[-1].due_at, page[-1].item_id)

    async def items_of(self, consultation_id: str) -> list[ScheduleRow]:
        async with self.db() as db:
            rows = await db.execute(_schedule_select().where(RetentionItem.consultation_id == consultation_id)
                                    .order_by(EvidenceItem.created_at))
            return [_schedule_row(r) for r in rows]

    async def item(self, item_id: str) -> dict[str, Any]:
        """Everything the records console shows of an item (content excluded)."""
        async with self.db() as db:
            await _begin_write(db)
            found = await db.scalar(select(EvidenceItem).where(EvidenceItem.id == item_id))
            if found is None:
                raise RetentionError(404, "not_found", "No such evidence item.")
            await self._ensure_rows(db, [item_id])
            await db.commit()
            row = (await db.execute(_schedule_select().where(RetentionItem.item_id == item_id))).one()
            reviews = list(await db.scalars(select(RetentionReview).where(RetentionReview.item_id == item_id)
                                            .order_by(RetentionReview.id)))
            holds = list(await db.scalars(select(RetentionHold).where(
                RetentionHold.target.in_((item_id, found.consultation_id))).order_by(RetentionHold.id)))
            cert = await db.scalar(select(DisposalCertificate).where(DisposalCertificate.item_id == item_id))
            recording = await db.get(Recording, item_id) if found.kind == "recording" else None
        schedule = _schedule_row(row)
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

    # -- changing it -----------------------------------------------------------

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
        if item is not None:
            return "item", item.consultation_id, [item]
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
                ap.add(who, "retention.review", _object(item.kind, item.id), consultation_id=consultation_id,
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
            obj = _object(items[0].kind, target) if scope == "item" else f"consultation:{target}"
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
            obj = _object(items[0].kind, target) if scope == "item" else f"consultation:{target}"
            ap.add(who, "retention.release", obj, consultation_id=consultation_id, reason=reason,
                   details={"holds": [h.id for h in holds], "scope": scope, "items": len(items)})
        return [hold_json(h) for h in holds]

    # -- disposal ----------------------------------------------------------------

    def _disposable(self, now: datetime, automatic: bool) -> Any:
        decided = or_(RetentionItem.state == "waiting",
                      and_(RetentionItem.state == "disposing", RetentionItem.updated_at <= now - STALE_DISPOSING))
        scheduled = and_(RetentionItem.state == "active", RetentionItem.action == "dispose")
        if automatic:  # the scheduled run: the 31-day rule, and disposals already decided
            scheduled = and_(scheduled, RetentionItem.rule == NON_EVIDENTIAL)
        return and_(_live(), RetentionItem.due_at <= now, or_(scheduled, decided))

    async def candidates(self, ids: Optional[Sequence[str]] = None, automatic: bool = False,
                         limit: Optional[int] = None) -> tuple[list[ScheduleRow], int]:
        """What a disposal run would take (not held), and how many due ones are held."""
        now = self.clock()
        where = self._disposable(now, automatic)
        async with self.db() as db:
            if ids is not None:
                await _begin_write(db)
                await self._check_ids(db, ids, now)
                where = and_(where, RetentionItem.item_id.in_(ids))
            query = _schedule_select().where(where, RetentionItem.held.is_(False)).order_by(
                RetentionItem.due_at, RetentionItem.item_id)
            rows = [_schedule_row(r) for r in await db.execute(query.limit(limit) if limit else query)]
            held = await db.scalar(select(func.count()).select_from(RetentionItem)
                                   .where(where, RetentionItem.held.is_(True)))
        return rows, held or 0

    async def _check_ids(self, db: AsyncSession, ids: Sequence[str], now: datetime) -> None:
        """Each named item must be due for disposal and free of holds; say which is not."""
        await self._ensure_rows(db, ids)
        await db.commit()
        rows = {r.item_id: r for r in await db.scalars(select(RetentionItem).where(RetentionItem.item_id.in_(ids)))}
        for item_id in ids:
            row = rows.get(item_id)
            if row is None:
                raise RetentionError(404, "not_found", f"No evidence item {item_id}.")
            if row.state == "disposed":
                raise RetentionError(409, "disposed", f"Item {item_id} is already disposed.")
            if row.held:
                raise RetentionError(409, "held", f"Item {item_id} is under a legal hold: release it first.")
            if row.state == "active" and (row.action != "dispose" or row.due_at is None or row.due_at > now):
                raise RetentionError(409, "not_due", f"Item {item_id} is not due for disposal "
                                     f"({row.action} due {rfc3339(row.due_at) or 'never'}); a review decides first.")

    async def dispose(self, who: Actor, ids: Optional[Sequence[str]] = None, *, execute: bool = False,
                      automatic: bool = False, limit: Optional[int] = None) -> DisposalReport:
        """Dispose of what is due (or the named items); a dry run unless ``execute``."""
        if not automatic:
            await self.refresh()
        candidates, held = await self.candidates(ids, automatic, limit)
        report = DisposalReport(executed=execute, candidates=candidates, held=held)
        if not execute:
            return report
        for start in range(0, len(candidates), DISPOSE_BATCH):
            await self._dispose_batch(who, candidates[start:start + DISPOSE_BATCH], report, automatic)
        if report.disposed or report.waiting or report.failed:
            log.info("disposal run by %s: %d disposed, %d waiting for a store lock, %d failed, %d held",
                     who.name, len(report.disposed), len(report.waiting), len(report.failed), held)
        return report

    async def _dispose_batch(self, who: Actor, batch: list[ScheduleRow], report: DisposalReport,
                             automatic: bool) -> None:
        now = self.clock()
        run = uuid.uuid4().hex
        # 1. Recompute from the sources and claim what is still due and not held, with a
        #    ``retention.dispose_start`` entry naming the run and its items: content is
        #    removed only once the log says who began erasing what (the append lock is
        #    also SQLite's write lock, and PostgreSQL's rows are locked FOR UPDATE).
        claimed: list[tuple[ScheduleRow, dict[str, Any]]] = []
        async with self.audit.transaction() as claim:
            db = claim.db
            await self._update(db, await self._compute(db, [r.item_id for r in batch]))
            still = {r.item_id: r for r in await db.scalars(
                select(RetentionItem).where(RetentionItem.item_id.in_([r.item_id for r in batch]),
                                            self._disposable(now, automatic), RetentionItem.held.is_(False))
                .with_for_update())}
            for row in batch:
                current = still.get(row.item_id)
                if current is None:
                    report.skipped += 1
                    continue
                decision = dict(current.disposal or {}) if current.state != "active" else {
                    "ordered_by": who.name, "ordered_role": who.role, "ordered_at": rfc3339(now),
                    "rule": current.rule, "due_at": rfc3339(current.due_at),
                    "basis": "review" if current.review_decision == "dispose" else "schedule",
                    "reviewed_at": rfc3339(current.reviewed_at),
                }
                decision["run"] = run
                claimed.append((row, decision))
            if claimed:  # the rows are locked (FOR UPDATE; SQLite's write lock): no one else claims them
                await db.execute(_SET_STATE, [
                    {"b_id": row.item_id, "b_state": "disposing", "b_due": still[row.item_id].due_at,
                     "b_disposal": decision, "b_now": now} for row, decision in claimed])
                claim.add(who, "retention.dispose_start", f"disposal:{run}",
                          details={"items": [row.item_id for row, _ in claimed], "automatic": automatic})
        if not claimed:
            return
        # 2. Remove the content from the store, every version.
        limiter = asyncio.Semaphore(PARALLEL)

        async def remove(prefix: str) -> Any:
            async with limiter:
                try:
                    return await self.store.dispose_all_versions(prefix)
                except StillLocked as exc:
                    return exc
                except Exception as exc:  # a store error: retried later, never lost
                    log.exception("disposal of %s failed", prefix)
                    return exc

        outcomes = await asyncio.gather(*(remove(row.prefix) for row, _ in claimed))
        # 3. Certificates, states and audit entries, in one transaction.
        states = []
        async with self.audit.transaction() as ap:
            db = ap.db
            for (row, decision), outcome in zip(claimed, outcomes):
                obj = _object(row.kind, row.item_id)
                if isinstance(outcome, StillLocked):
                    decision["waiting_until"] = outcome.until.isoformat()
                    states.append(("waiting", outcome.until, row, decision))
                    ap.add(who, "retention.dispose_waiting", obj, consultation_id=row.consultation_id,
                           details={"until": rfc3339(outcome.until), "removed": outcome.removed})
                    report.waiting[row.item_id] = outcome.until
                elif isinstance(outcome, Exception):
                    retry = self.clock() + RETRY_AFTER
                    decision["waiting_until"], decision["error"] = retry.isoformat(), str(outcome)[:500]
                    states.append(("waiting", retry, row, decision))
                    ap.add(who, "retention.dispose_failed", obj, consultation_id=row.consultation_id,
                           details={"error": str(outcome)[:500], "retry_at": rfc3339(retry)})
                    report.failed[row.item_id] = str(outcome)
                else:
                    cert = self._certificate(who, row, decision, outcome.removed)
                    db.add(cert)
                    states.append(("disposed", None, row, decision))
                    ap.add(who, "evidence.erase", obj, consultation_id=row.consultation_id,
                           reason=f"retention: {decision['rule']} ({decision['basis']})",
                           details={"certificate": cert.id, "sha256": row.sha256, "objects": outcome.removed,
                                    "ordered_by": decision.get("ordered_by")})
                    report.disposed.append(row.item_id)
                    report.certificates.append(cert.id)
            await db.execute(_SET_STATE, [{"b_id": row.item_id, "b_state": state, "b_due": due, "b_disposal": decision,
                                           "b_now": self.clock()} for state, due, row, decision in states])

    def _certificate(self, who: Actor, row: ScheduleRow, decision: dict[str, Any], removed: int) -> DisposalCertificate:
        now = self.clock()
        cert_id = str(uuid.uuid4())
        rule = decision.get("rule", row.rule)
        cls = self.policy.classes.get(rule)
        document = {
            "type": "evr.disposal_certificate", "version": 1, "id": cert_id,
            "item": {"id": row.item_id, "kind": row.kind, "consultation_id": row.consultation_id,
                     "cad_ref": row.cad_ref, "prefix": row.prefix, "sha256": row.sha256, "size": row.size,
                     "created_at": rfc3339(row.created_at)},
            "rule": rule, "rule_label": cls.label if cls else rule,
            "decision": {k: decision.get(k) for k in ("basis", "due_at", "reviewed_at", "ordered_by",
                                                      "ordered_role", "ordered_at")},
            "disposed_by": {"name": who.name, "role": who.role},
            "disposed_at": rfc3339(now),
            "objects_removed": removed,
            "store": type(self.store).__name__,
        }
        body = canonical(document).decode()
        return DisposalCertificate(id=cert_id, item_id=row.item_id, consultation_id=row.consultation_id,
                                   disposed_at=now, document=body, key_fingerprint=fingerprint(self.key.public_key()),
                                   signature=self.key.sign(body.encode()).hex())

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
        await self.audit.record(who, "evidence.view", _object(item.kind, item_id), consultation_id=item.consultation_id,
                                reason=reason, details={"object": key})
        return self.store.read(key)

    # -- the scheduled run inside `evr serve` -------------------------------------

    async def sweep(self) -> DisposalReport:
        """Refresh, dispose of non-evidential recordings past their 31 days (and finish
        disposals already decided), and sign an audit checkpoint."""
        await self.refresh()
        report = await self.dispose(Actor.system(), execute=True, automatic=True)
        await self.audit.checkpoint()
        return report


def _live() -> Any:
    """Not disposed: the very predicate of the partial index ``ix_retention_items_live_due``."""
    return RetentionItem.state != "disposed"


_ITEMS = RetentionItem.__table__
_UPDATE_ACTIVE = (
    update(_ITEMS).where(_ITEMS.c.item_id == bindparam("b_id"), _ITEMS.c.state == "active")
    .values(rule=bindparam("b_rule"), due_at=bindparam("b_due"), action=bindparam("b_action"),
            held=bindparam("b_held"), updated_at=bindparam("b_now"))
)
_UPDATE_HELD = (
    update(_ITEMS).where(_ITEMS.c.item_id == bindparam("b_id"),
                         or_(_ITEMS.c.state == "waiting", _ITEMS.c.state == "disposing"))
    .values(held=bindparam("b_held"))
)


_SET_STATE = (
    update(_ITEMS).where(_ITEMS.c.item_id == bindparam("b_id"))
    .values(state=bindparam("b_state"), due_at=bindparam("b_due"), disposal=bindparam("b_disposal"),
            updated_at=bindparam("b_now"))
)


async def _begin_write(db: AsyncSession) -> None:
    """On SQLite, take the write lock before reading what is about to be written, so a
    second process (``evr serve`` and a command) waits instead of failing half-way.
    PostgreSQL's row locks do that by themselves."""
    if db.bind.dialect.name == "sqlite":
        await db.execute(text("BEGIN IMMEDIATE"))


async def _active_hold_targets(db: AsyncSession) -> set[str]:
    return set(await db.scalars(select(RetentionHold.target).where(RetentionHold.released_at.is_(None))))


async def _set_meta(db: AsyncSession, key: str, value: str) -> None:
    found = await db.get(RetentionMeta, key)
    if found is None:
        db.add(RetentionMeta(key=key, value=value))
    else:
        found.value = value


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
