"""The evidence store: where recordings, uploads and statements are kept, add-only,
hashed, and encrypted at rest (AES-256-GCM, a data key per item, see :mod:`.crypto`).

One interface (:class:`EvidenceStore`) with interchangeable back ends: files under
``DATA/evidence`` (default) and S3 (:class:`evr.evidence.s3.S3Store`, with versioning
and Object Lock). Nothing in the service can change or overwrite an item once added;
only the retention tools remove one (:meth:`EvidenceStore.dispose`), and they keep a
certificate when they do.

Keys are relative paths such as ``recordings/<consultation>/<recording>/seg-000001.webm``.
"""

from __future__ import annotations

from .crypto import CHUNK, IntegrityError, MasterKey, load_master_key
from .store import (
    EvidenceStore,
    FileStore,
    ItemExists,
    ItemMissing,
    StoredItem,
    check_key,
    make_store,
)

__all__ = [
    "CHUNK",
    "EvidenceStore",
    "FileStore",
    "IntegrityError",
    "ItemExists",
    "ItemMissing",
    "MasterKey",
    "StoredItem",
    "check_key",
    "load_master_key",
    "make_store",
]
