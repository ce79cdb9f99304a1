"""Disposal: an item's content removed from every store, with a signed certificate.

Disposal removes an item's content from every store (every object version), in
batches, and keeps a signed disposal certificate (what, its hash, who, when, the rule
and the decision) and an audit entry for each item. Before anything is removed, the
item's rule and holds are recomputed from their sources: a recording marked evidential
or a hold placed a moment ago stops it.

What the database keeps of an item's content goes with it, in the transaction that
records its disposal: a chat transcript's messages (``chat_messages``, the rows it
was sealed from). Once none of a consultation's items is left, the victim's last
shared location goes too (a ``location.erase`` entry says so).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional, Sequence, cast

from sqlalchemy import CursorResult, Table, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from evr.audit import Actor, Appender
from evr.db import ChatMessage, Consultation, DisposalCertificate, EvidenceItem, RetentionItem
from evr.evidence.store import StillLocked
from evr.integrity import canonical
from evr.keys import fingerprint
from evr.timeutil import rfc3339

from .policy import NON_EVIDENTIAL
from .schedule import (
    RetentionError,
    Schedule,
    ScheduleRow,
    audit_object,
    begin_write,
    live,
    schedule_row,
    schedule_select,
)

log = logging.getLogger(__name__)

#: Items disposed of per transaction.
DISPOSE_BATCH = 1000
#: Stores worked on at once during a disposal run.
PARALLEL = 16
#: A disposal left half-way (a crash) is taken up again after this long.
STALE_DISPOSING = timedelta(minutes=15)
#: A disposal that failed (store unreachable...) is retried after this long.
RETRY_AFTER = timedelta(hours=1)

#: An item claimed for disposal, and the decision kept in its row and certificate.
Claimed = tuple[ScheduleRow, dict[str, Any]]


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


class Disposal(Schedule):
    """The disposing side of :class:`evr.retention.service.Retention`."""

    def _disposable(self, now: datetime, automatic: bool) -> Any:
        decided = or_(RetentionItem.state == "waiting",
                      and_(RetentionItem.state == "disposing", RetentionItem.updated_at <= now - STALE_DISPOSING))
        scheduled = and_(RetentionItem.state == "active", RetentionItem.action == "dispose")
        if automatic:  # the scheduled run: the 31-day rule, and disposals already decided
            scheduled = and_(scheduled, RetentionItem.rule == NON_EVIDENTIAL)
        return and_(live(), RetentionItem.due_at <= now, or_(scheduled, decided))

    async def candidates(self, ids: Optional[Sequence[str]] = None, automatic: bool = False,
                         limit: Optional[int] = None) -> tuple[list[ScheduleRow], int]:
        """What a disposal run would take (not held), and how many due ones are held."""
        now = self.clock()
        where = self._disposable(now, automatic)
        async with self.db() as db:
            if ids is not None:
                await begin_write(db)
                await self._check_ids(db, ids, now)
                where = and_(where, RetentionItem.item_id.in_(ids))
            query = schedule_select().where(where, RetentionItem.held.is_(False)).order_by(
                RetentionItem.due_at, RetentionItem.item_id)
            rows = [schedule_row(r) for r in await db.execute(query.limit(limit) if limit else query)]
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
        # 1. Claim what is still due and not held, logged before anything is removed.
        claimed = await self._claim(who, batch, report, automatic)
        if not claimed:
            return
        # 2. Remove the content from the store, every version.
        outcomes = await self._remove_content([row for row, _ in claimed])
        # 3. Certificates, states and audit entries, in one transaction.
        await self._record_outcomes(who, claimed, outcomes, report)

    async def _claim(self, who: Actor, batch: list[ScheduleRow], report: DisposalReport,
                     automatic: bool) -> list[Claimed]:
        """Recompute from the sources and claim what is still due and not held, with a
        ``retention.dispose_start`` entry naming the run and its items: content is
        removed only once the log says who began erasing what (the append lock is
        also SQLite's write lock, and PostgreSQL's rows are locked FOR UPDATE)."""
        now = self.clock()
        run = uuid.uuid4().hex
        claimed: list[Claimed] = []
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
                claimed.append((row, {**_decision(who, current, now), "run": run}))
            if claimed:  # the rows are locked (FOR UPDATE; SQLite's write lock): no one else claims them
                await db.execute(_SET_STATE, [
                    {"b_id": row.item_id, "b_state": "disposing", "b_due": still[row.item_id].due_at,
                     "b_disposal": decision, "b_now": now} for row, decision in claimed])
                claim.add(who, "retention.dispose_start", f"disposal:{run}",
                          details={"items": [row.item_id for row, _ in claimed], "automatic": automatic})
        return claimed

    async def _remove_content(self, rows: list[ScheduleRow]) -> list[Any]:
        """Each item's content removed from the store, every version, :data:`PARALLEL`
        at once: its ``Disposed``, or the ``StillLocked`` or other error that stopped it."""
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

        return list(await asyncio.gather(*(remove(row.prefix) for row in rows)))

    async def _record_outcomes(self, who: Actor, claimed: list[Claimed], outcomes: list[Any],
                               report: DisposalReport) -> None:
        """In one transaction: a certificate for each item disposed of, a waiting state
        for each one a store lock or an error kept, and an audit entry for each."""
        states: list[tuple[str, Optional[datetime], ScheduleRow, dict[str, Any]]] = []
        async with self.audit.transaction() as ap:
            db = ap.db
            for (row, decision), outcome in zip(claimed, outcomes, strict=True):
                obj = audit_object(row.kind, row.item_id)
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
                    rows = await _erase_rows(db, row)
                    ap.add(who, "evidence.erase", obj, consultation_id=row.consultation_id,
                           reason=f"retention: {decision['rule']} ({decision['basis']})",
                           details={"certificate": cert.id, "sha256": row.sha256, "objects": outcome.removed,
                                    "ordered_by": decision.get("ordered_by"), **rows})
                    report.disposed.append(row.item_id)
                    report.certificates.append(cert.id)
            await db.execute(_SET_STATE, [{"b_id": row.item_id, "b_state": state, "b_due": due, "b_disposal": decision,
                                           "b_now": self.clock()} for state, due, row, decision in states])
            await _erase_location(ap, who, {row.consultation_id for state, _, row, _ in states if state == "disposed"})

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



async def _erase_rows(db: AsyncSession, row: ScheduleRow) -> dict[str, int]:
    """Delete the database rows an item's content was made from (a chat transcript's
    messages); what was deleted, for its ``evidence.erase`` entry."""
    if row.kind != "chat":
        return {}
    result = await db.execute(delete(ChatMessage).where(ChatMessage.consultation_id == row.consultation_id))
    return {"chat_messages": cast(CursorResult[Any], result).rowcount}


async def _erase_location(ap: Appender, who: Actor, consultation_ids: set[str]) -> None:
    """Clear the victim's last shared location of each consultation none of whose
    items is left (every one disposed of), with a ``location.erase`` entry."""
    if not consultation_ids:
        return
    db = ap.db
    left = set(await db.scalars(
        select(EvidenceItem.consultation_id).distinct()
        .outerjoin(RetentionItem, RetentionItem.item_id == EvidenceItem.id)
        .where(EvidenceItem.consultation_id.in_(consultation_ids),
               or_(RetentionItem.state.is_(None), RetentionItem.state != "disposed"))))
    for consultation_id in sorted(consultation_ids - left):
        consultation = await db.get(Consultation, consultation_id)
        if consultation is not None and consultation.location is not None:
            consultation.location = None
            ap.add(who, "location.erase", f"consultation:{consultation_id}", consultation_id=consultation_id,
                   reason="retention: the last of the consultation's items was disposed of")


def _decision(who: Actor, current: RetentionItem, now: datetime) -> dict[str, Any]:
    """Who ordered an item's disposal, under which rule and on what basis: taken up
    again from the row when an earlier run already decided it."""
    if current.state != "active":
        return dict(current.disposal or {})
    return {
        "ordered_by": who.name, "ordered_role": who.role, "ordered_at": rfc3339(now),
        "rule": current.rule, "due_at": rfc3339(current.due_at),
        "basis": "review" if current.review_decision == "dispose" else "schedule",
        "reviewed_at": rfc3339(current.reviewed_at),
    }


_ITEMS = cast(Table, RetentionItem.__table__)  # typed FromClause; a declarative class's is its Table
_SET_STATE = (
    update(_ITEMS).where(_ITEMS.c.item_id == bindparam("b_id"))
    .values(state=bindparam("b_state"), due_at=bindparam("b_due"), disposal=bindparam("b_disposal"),
            updated_at=bindparam("b_now"))
)
