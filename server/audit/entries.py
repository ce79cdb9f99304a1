"""What an audit entry and a checkpoint are, as hashed, signed, kept and shown.

The writer and the verifier must agree on these to the byte, so both read them here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from ..db import AuditCheckpoint, AuditEntry
from ..integrity import canonical
from ..timeutil import rfc3339

if TYPE_CHECKING:
    from aiohttp import web

#: Where checkpoints are kept in the evidence store (add-only; Object Lock on S3).
CHECKPOINT_PREFIX = "audit/checkpoints/"


@dataclass(frozen=True)
class Actor:
    """Who did something, and from where."""

    name: str
    role: str
    client: Optional[str] = None

    @classmethod
    def system(cls) -> "Actor":
        return cls("system", "system")


def client_address(request: "web.Request") -> Optional[str]:
    return request.remote


def _stamp(value: datetime) -> str:
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


def _fields(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action,
        "object": entry.object,
        "consultation_id": entry.consultation_id,
        "reason": entry.reason,
        "client": entry.client,
        "details": entry.details or {},
    }


def entry_hash(entry: AuditEntry) -> str:
    """SHA-256 of the entry's canonical JSON (every field but ``hash``)."""
    body = {**_fields(entry), "at": _stamp(entry.at), "prev_hash": entry.prev_hash}
    return hashlib.sha256(canonical(body)).hexdigest()


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {**_fields(entry), "at": rfc3339(entry.at), "hash": entry.hash}


#: The fields of a checkpoint its signature covers, in :func:`checkpoint_document`.
SIGNED_FIELDS = ("type", "version", "id", "at", "last_id", "last_hash")


def checkpoint_document(cp: AuditCheckpoint) -> dict[str, Any]:
    """What a checkpoint's signature covers."""
    return {"type": "evr.audit_checkpoint", "version": 1, "id": cp.id, "at": _stamp(cp.at),
            "last_id": cp.last_id, "last_hash": cp.last_hash}


def checkpoint_json(cp: AuditCheckpoint) -> dict[str, Any]:
    return {**checkpoint_document(cp), "key_fingerprint": cp.key_fingerprint, "signature": cp.signature}
