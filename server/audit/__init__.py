"""The audit log (DPA 2018 s.62): append-only, each entry hash-chained to the one before.

Every collection, view, download, export, disclosure, alteration and erasure of
evidence or personal data is appended here with who, role, what, which object, why
and from where. An entry's ``hash`` is the SHA-256 of its canonical JSON (which
includes the previous entry's hash), so editing, removing or reordering any row
breaks the chain from that row on; :func:`verify_log` names the first bad entry.

A chain alone cannot show that its newest entries were cut off, nor that the whole
log was rewritten with fresh hashes. So the service signs **checkpoints** with its
Ed25519 key: (the newest entry's id, its hash), every ``audit_checkpoint_every``
entries, on each scheduled sweep and when a process that appended stops. Each is kept
in the database and, add-only, in the evidence store (``audit/checkpoints/``), where
nobody with only database access can remove it. :func:`verify_log` checks every
signature and that every checkpointed entry is still there with the signed hash.

Nothing in the service deletes or updates an audit row: there is no API for it.

The log's three concerns live apart, each reading the one format of :mod:`.entries`:
:mod:`.writing` appends and signs checkpoints, :mod:`.verification` checks the
chain and the checkpoints, :mod:`.queries` searches. Import every name from here.
"""

from ..integrity import GENESIS, canonical
from .entries import (
    CHECKPOINT_PREFIX,
    Actor,
    checkpoint_document,
    checkpoint_json,
    client_address,
    entry_hash,
    entry_json,
)
from .queries import AuditQuery, search
from .verification import Verification, iter_entries, signature_ok, verify_chain, verify_log
from .writing import DEFAULT_CHECKPOINT_EVERY, Appender, AuditLog

__all__ = [
    "CHECKPOINT_PREFIX", "DEFAULT_CHECKPOINT_EVERY", "GENESIS", "Actor", "Appender", "AuditLog", "AuditQuery",
    "Verification", "canonical", "checkpoint_document", "checkpoint_json", "client_address", "entry_hash",
    "entry_json", "iter_entries", "search", "signature_ok", "verify_chain", "verify_log",
]
