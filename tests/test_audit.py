"""The audit log's hash chain: appends chain, and any edit, removal or reorder is named."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from evr.app import DB
from evr.audit import GENESIS, Actor, AuditLog, verify_chain
from evr.db import AuditEntry


async def _log(server, clock, n: int = 5) -> AuditLog:
    audit = AuditLog(server.app[DB], clock)
    for i in range(n):
        await audit.record(Actor("alice", "officer", "127.0.0.1"), "recording.view", f"recording:{i}",
                           consultation_id=None, reason=f"why {i}", details={"i": i, "name": "Zoë"})
        clock.advance(seconds=1)
    return audit


async def test_entries_chain_and_verify(server, clock):
    await _log(server, clock)
    async with server.app[DB]() as db:
        rows = list(await db.scalars(select(AuditEntry).order_by(AuditEntry.id)))
        assert [r.id for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0].prev_hash == GENESIS and all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:]))
        assert await verify_chain(db) == (5, None)


async def test_an_edited_row_is_named(server, clock):
    await _log(server, clock)
    async with server.app[DB]() as db:
        await db.execute(update(AuditEntry).where(AuditEntry.id == 3).values(reason="nothing to see"))
        await db.commit()
        checked, problem = await verify_chain(db)
    assert problem is not None and "entry 3 was altered" in problem


async def test_a_removed_row_is_named(server, clock):
    await _log(server, clock)
    async with server.app[DB]() as db:
        await db.execute(delete(AuditEntry).where(AuditEntry.id == 2))
        await db.commit()
        checked, problem = await verify_chain(db)
    assert problem is not None and "entry 2 is missing" in problem


async def test_a_rewritten_row_with_a_fresh_hash_breaks_the_next_link(server, clock):
    """Recomputing a tampered row's own hash does not help: the next entry names it."""
    from evr.audit import entry_hash

    await _log(server, clock)
    async with server.app[DB]() as db:
        row = await db.get(AuditEntry, 2)
        row.actor = "mallory"
        row.hash = entry_hash(row)
        await db.commit()
        checked, problem = await verify_chain(db)
    assert problem is not None and "entry 3 does not follow entry 2" in problem
