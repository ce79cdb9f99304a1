"""Verifying the audit log: the chain entry by entry, and every signed checkpoint.

:func:`verify_log` reads as its phases: the checkpoints in the database (their
signatures), their copies kept in the evidence store (against the database's), the
chain (each entry against the one before and against what was signed), and last
whether the log's tail was cut. It names the first problem found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import AuditCheckpoint, AuditEntry
from ..integrity import GENESIS, canonical
from .entries import CHECKPOINT_PREFIX, SIGNED_FIELDS, checkpoint_document, entry_hash

if TYPE_CHECKING:
    from ..evidence import EvidenceStore

#: What the checkpoints say the log holds: entry id -> (its signed hash, which checkpoint says so).
Expected = dict[int, tuple[str, str]]
#: The database's checkpoints by id: (the signed document, its signature).
InDatabase = dict[int, tuple[dict[str, Any], str]]


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


async def verify_log(
    db: AsyncSession, public_key: Optional[Ed25519PublicKey] = None, store: Optional["EvidenceStore"] = None
) -> Verification:
    """Check the whole chain and every checkpoint; name the first problem.

    Without ``public_key`` the checkpoints' signatures are not checked (only that the
    entries they name still carry the hashes they recorded)."""
    result = Verification()
    problems: list[str] = []
    expected: Expected = {}
    # 1. The database's checkpoints, each signature checked.
    in_db = await _check_database_checkpoints(db, public_key, result, expected, problems)
    # 2. The copies kept in the evidence store, against the database's.
    if store is not None:
        await _check_kept_checkpoints(store, public_key, in_db, result, expected, problems)
    result.signed_through = max(expected, default=0)
    # 3. The chain, entry by entry: a broken link is the first problem.
    last = await _walk_chain(db, expected, result)
    if result.problem is not None:
        return result
    # 4. Then a cut tail, then the checkpoints' problems; else note what no checkpoint covers.
    result.problem = _cut_tail(expected, result.signed_through, last) or (problems[0] if problems else None)
    if result.problem is None and last > result.signed_through:
        result.notes.append(f"entries {result.signed_through + 1}-{last} follow the newest signed checkpoint")
    return result


async def _check_database_checkpoints(db: AsyncSession, public_key: Optional[Ed25519PublicKey],
                                      result: Verification, expected: Expected, problems: list[str]) -> InDatabase:
    """Every checkpoint row: a valid signature makes its (entry, hash) expected."""
    rows = list(await db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))
    result.checkpoints = len(rows)
    in_db: InDatabase = {}
    for cp in rows:
        doc = checkpoint_document(cp)
        in_db[cp.id] = (doc, cp.signature)
        if public_key is not None and not _signature_ok(doc, cp.signature, public_key):
            problems.append(f"checkpoint {cp.id} (entry {cp.last_id}) does not carry a valid signature "
                            f"of this service's key (altered or forged)")
            continue
        expected[cp.last_id] = (cp.last_hash, f"signed checkpoint {cp.id}")
    return in_db


async def _kept_checkpoints(store: "EvidenceStore") -> dict[int, dict[str, Any]]:
    kept: dict[int, dict[str, Any]] = {}
    for key in await store.keys(CHECKPOINT_PREFIX):
        try:
            doc = json.loads(await store.read_bytes(key))
            kept[int(doc["id"])] = doc
        except (ValueError, KeyError, TypeError):
            kept[-len(kept) - 1] = {"unreadable": key}
    return kept


async def _check_kept_checkpoints(store: "EvidenceStore", public_key: Optional[Ed25519PublicKey],
                                  in_db: InDatabase, result: Verification, expected: Expected,
                                  problems: list[str]) -> None:
    """Every kept copy must be signed, and match the database's row (which must be
    there); a kept copy also makes its (entry, hash) expected."""
    kept = await _kept_checkpoints(store)
    result.kept = len(kept)
    for cid, doc in sorted(kept.items()):
        if "unreadable" in doc:
            problems.append(f"the kept checkpoint {doc['unreadable']} is unreadable")
            continue
        signed: dict[str, Any] = {k: doc.get(k) for k in SIGNED_FIELDS}
        if public_key is not None and not _signature_ok(signed, str(doc.get("signature", "")), public_key):
            problems.append(f"the kept copy of checkpoint {cid} does not carry a valid signature")
            continue
        if cid not in in_db:
            problems.append(f"checkpoint {cid} (entry {signed['last_id']}) is kept in the evidence store "
                            f"but missing from the database")
        elif in_db[cid][0] != signed:
            problems.append(f"checkpoint {cid} in the database differs from its kept copy")
        expected.setdefault(int(signed["last_id"]), (str(signed["last_hash"]), f"signed checkpoint {cid}"))


async def _walk_chain(db: AsyncSession, expected: Expected, result: Verification) -> int:
    """Each entry in order: present, linked to the one before, unaltered, and as signed.
    Sets ``result.problem`` at the first that is not; returns the last good entry's id."""
    prev = GENESIS
    expected_id = 1
    async for entry in iter_entries(db):
        result.entries += 1
        if entry.id != expected_id:
            result.problem = f"entry {expected_id} is missing (next is {entry.id})"
        elif entry.prev_hash != prev:
            result.problem = f"entry {entry.id} does not follow entry {entry.id - 1} (chain broken)"
        elif entry_hash(entry) != entry.hash:
            result.problem = f"entry {entry.id} was altered (its hash does not match its content)"
        elif entry.id in expected and expected[entry.id][0] != entry.hash:
            result.problem = (f"entry {entry.id} differs from {expected[entry.id][1]} "
                              f"(the log was rewritten up to here)")
        if result.problem is not None:
            break
        prev = entry.hash
        expected_id += 1
    return expected_id - 1


def _cut_tail(expected: Expected, signed_through: int, last: int) -> Optional[str]:
    """A checkpoint that covers entries beyond the log's end: its tail was cut."""
    if signed_through <= last:
        return None
    _, name = expected[signed_through]
    return (f"entry {last + 1} is missing: {name} covers entries up to {signed_through} "
            f"but the log ends at {last} (its tail was cut)")


async def verify_chain(db: AsyncSession) -> tuple[int, Optional[str]]:
    """Check the whole chain: (entries checked, the first problem or None)."""
    result = await verify_log(db)
    return result.entries, result.problem
