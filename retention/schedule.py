"""The retention schedule: a row per evidence item, kept in step with its sources.

Every evidence item (``evidence_items``) gets a row in ``retention_items`` holding the
rule that applies to it, when it is next due and for what (review or disposal),
whether a legal hold covers it, and where its disposal stands. :meth:`Schedule.refresh`
keeps those rows in step with what other parts of the service write (new items,
recordings marked evidential, a changed policy); every change the commands make
recomputes the rows it touches at once (:meth:`Schedule._recompute`). The due list is
then one ordered scan of a partial index of the live items, whatever their number.

Here too: what a schedule row is as shown (:class:`ScheduleRow`, the CSV export), and
the one refusal of the retention service (:class:`RetentionError`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Optional, Sequence, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Table, and_, bindparam, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evr.audit import AuditLog
from evr.db import (
    Consultation,
    EvidenceItem,
    Recording,
    RetentionAssignment,
    RetentionHold,
    RetentionItem,
    RetentionMeta,
)
from evr.errors import ApiError
from evr.evidence.store import EvidenceStore
from evr.timeutil import Clock, rfc3339

from .policy import NON_EVIDENTIAL, UNCLASSIFIED, Policy, ReviewState

log = logging.getLogger(__name__)

#: Items computed per transaction.
BATCH = 5000


class RetentionError(ApiError):
    """A refusal of the retention service: an :class:`evr.errors.ApiError`, so the API
    renders it where it renders every other (:func:`evr.app.json_errors`) and the
    command line prints its message."""



def audit_object(kind: str, item_id: str) -> str:
    return f"{kind}:{item_id}"



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

    def due_key(self) -> tuple[datetime, str]:
        """The due list's keyset cursor at this item: (due_at, item_id). Every item on
        the due list has a due time; ``ValueError`` for one without."""
        if self.due_at is None:
            raise ValueError(f"item {self.item_id} has no due time: it is on no due list")
        return self.due_at, self.item_id

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


def schedule_select() -> Any:
    return (select(*_SCHEDULE_COLUMNS)
            .join(EvidenceItem, EvidenceItem.id == RetentionItem.item_id)
            .join(Consultation, Consultation.id == RetentionItem.consultation_id))


def schedule_row(r: Any) -> ScheduleRow:
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



class Schedule:
    """The schedule kept in step with its sources: what the other parts of the
    retention service (queries, commands, disposal) build on."""

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
                await begin_write(db)
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
                await begin_write(db)
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
            await begin_write(db)
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
                   Recording.source_recording_id,
                   RetentionItem.review_decision, RetentionItem.reviewed_at, RetentionItem.next_review_at)
            .join(Consultation, Consultation.id == EvidenceItem.consultation_id)
            .outerjoin(RetentionAssignment, RetentionAssignment.consultation_id == EvidenceItem.consultation_id)
            .outerjoin(Recording, and_(Recording.id == EvidenceItem.id, EvidenceItem.kind == "recording"))
            .outerjoin(RetentionItem, RetentionItem.item_id == EvidenceItem.id)
            .where(EvidenceItem.id.in_(ids)))
        holds = await active_hold_targets(db)
        out = []
        for r in rows:
            if r.classification == NON_EVIDENTIAL:
                rule, start = NON_EVIDENTIAL, r.started_at or r.created_at
            else:
                rule, start = r.retention_class or self.policy.default_class or UNCLASSIFIED, r.opened_at
            review = ReviewState(r.review_decision, r.reviewed_at, r.next_review_at) if r.review_decision else None
            due = self.policy.due(rule, start, r.subject_dob, review)
            out.append(Computed(r.id, r.consultation_id, rule, due.due_at, due.action,
                                # a redacted copy is held with its original (and shares its rule and start)
                                bool({r.id, r.consultation_id, r.source_recording_id} & holds)))
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
            dialect = db.get_bind().dialect.name
            insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(RetentionItem)
            await db.execute(insert.on_conflict_do_nothing(index_elements=["item_id"]), values)
        return len(missing)


def live() -> Any:
    """Not disposed: the very predicate of the partial index ``ix_retention_items_live_due``."""
    return RetentionItem.state != "disposed"


_ITEMS = cast(Table, RetentionItem.__table__)  # typed FromClause; a declarative class's is its Table
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


async def begin_write(db: AsyncSession) -> None:
    """On SQLite, take the write lock before reading what is about to be written, so a
    second process (``evr serve`` and a command) waits instead of failing half-way.
    PostgreSQL's row locks do that by themselves."""
    if db.get_bind().dialect.name == "sqlite":
        await db.execute(text("BEGIN IMMEDIATE"))


async def active_hold_targets(db: AsyncSession) -> set[str]:
    return set(await db.scalars(select(RetentionHold.target).where(RetentionHold.released_at.is_(None))))


async def _set_meta(db: AsyncSession, key: str, value: str) -> None:
    found = await db.get(RetentionMeta, key)
    if found is None:
        db.add(RetentionMeta(key=key, value=value))
    else:
        found.value = value
