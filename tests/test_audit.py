"""The audit log's hash chain and signed checkpoints: any edit, removal, reorder, cut tail
or rewrite is named, in code and by `evr audit verify`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update

from evr.audit import CHECKPOINT_PREFIX, GENESIS, Actor, AuditLog, verify_chain, verify_log
from evr.db import AuditCheckpoint, AuditEntry
from evr.http import DB, STORE


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


# -- signed checkpoints ----------------------------------------------------------


async def _signed(server, clock, n: int = 7, every: int = 3):
    key = Ed25519PrivateKey.generate()
    audit = AuditLog(server.app[DB], clock, key, server.app[STORE], checkpoint_every=every)
    for i in range(n):
        await audit.record(Actor("alice", "records", "10.0.0.1"), "retention.review", f"upload:{i}", reason="r")
    return audit, key.public_key()


async def test_checkpoints_are_signed_every_n_entries_and_kept_outside_the_database(server, clock):
    audit, public = await _signed(server, clock)
    async with server.app[DB]() as db:
        assert [c.last_id for c in await db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id))] == [3, 6]
    assert (await audit.checkpoint()).last_id == 7  # at a sweep or exit: the tail is signed too
    assert await audit.checkpoint() is None  # nothing new since
    assert len(await server.app[STORE].keys(CHECKPOINT_PREFIX)) == 3
    async with server.app[DB]() as db:
        result = await verify_log(db, public, server.app[STORE])
    assert (result.problem, result.entries, result.checkpoints, result.kept, result.signed_through) == (
        None, 7, 3, 3, 7)


async def test_a_cut_tail_is_named(server, clock):
    audit, public = await _signed(server, clock)
    await audit.checkpoint()
    async with server.app[DB]() as db:
        await db.execute(delete(AuditEntry).where(AuditEntry.id >= 6))
        await db.commit()
        result = await verify_log(db, public)
    assert result.problem.startswith("entry 6 is missing: signed checkpoint 3 covers entries up to 7")


async def test_a_cut_tail_whose_checkpoints_were_deleted_too_is_named_from_the_kept_copies(server, clock):
    audit, public = await _signed(server, clock)
    await audit.checkpoint()
    async with server.app[DB]() as db:
        await db.execute(delete(AuditEntry).where(AuditEntry.id >= 5))
        await db.execute(delete(AuditCheckpoint).where(AuditCheckpoint.last_id >= 5))
        await db.commit()
        alone = await verify_log(db, public)  # what the database alone can show
        kept = await verify_log(db, public, server.app[STORE])
    assert alone.problem is None and alone.entries == 4
    assert kept.problem.startswith("entry 5 is missing: signed checkpoint 3 covers entries up to 7")


async def test_a_log_rewritten_with_fresh_hashes_differs_from_its_checkpoint(server, clock):
    from evr.audit import entry_hash

    _, public = await _signed(server, clock)
    async with server.app[DB]() as db:
        prev = None
        for row in await db.scalars(select(AuditEntry).order_by(AuditEntry.id)):
            if row.id == 2:
                row.reason = "rewritten"
            if prev is not None:
                row.prev_hash = prev
            row.hash = entry_hash(row)
            prev = row.hash
            await db.flush()
        await db.commit()
        result = await verify_log(db, public)  # every link checks out, but the signed hash does not
    assert result.problem == "entry 3 differs from signed checkpoint 1 (the log was rewritten up to here)"


async def test_a_forged_checkpoint_is_named(server, clock):
    _, public = await _signed(server, clock)
    async with server.app[DB]() as db:
        await db.execute(update(AuditCheckpoint).where(AuditCheckpoint.id == 2).values(last_hash="f" * 64))
        await db.commit()
        result = await verify_log(db, public)
    assert result.problem.startswith("checkpoint 2 (entry 6) does not carry a valid signature")


def test_evr_audit_verify_names_a_row_edited_in_the_database(tmp_path):
    """The command line, as an auditor runs it, on a service's data directory."""
    import asyncio

    from evr.config import Settings
    from evr.db import make_engine, migrate, sessionmaker
    from evr.evidence import make_store
    from evr.keys import load_signing_key
    from evr.timeutil import utcnow

    data = tmp_path / "data"
    settings = Settings.load(data_dir=data, environ={})

    async def fill() -> None:
        data.mkdir()
        engine = make_engine(settings.db_url)
        await migrate(engine)
        store = make_store(settings)
        audit = AuditLog(sessionmaker(engine), utcnow, load_signing_key(settings), store, checkpoint_every=2)
        for i in range(5):
            await audit.record(Actor("rita", "records"), "evidence.view", f"upload:{i}", reason=f"why {i}")
        await audit.checkpoint()
        await store.close()
        await engine.dispose()

    asyncio.run(fill())
    verify = [sys.executable, "-m", "evr", "audit", "verify", "--data", str(data)]
    ok = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "OK: audit log intact: 5 entries, 3 signed checkpoint(s)" in ok.stdout, ok.stderr
    with sqlite3.connect(data / "evr.sqlite3") as db:
        db.execute("UPDATE audit_log SET reason = 'nothing to see' WHERE id = 3")
    bad = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "FAILED: entry 3 was altered" in bad.stdout
    with sqlite3.connect(data / "evr.sqlite3") as db:
        db.execute("UPDATE audit_log SET reason = 'why 2' WHERE id = 3")
        db.execute("DELETE FROM audit_log WHERE id = 5")
    cut = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert cut.returncode == 1 and "FAILED: entry 5 is missing" in cut.stdout
    other = tmp_path / "other.pem"
    from evr.keys import public_pem

    other.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    forged = subprocess.run([*verify, "--public-key", str(other)], capture_output=True, text=True, timeout=60)
    assert forged.returncode == 1 and "FAILED" in forged.stdout
    empty = subprocess.run([sys.executable, "-m", "evr", "audit", "verify", "--data", str(tmp_path / "none")],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no database" in empty.stdout
