"""The evidence store: where recordings, uploads and statements are kept, add-only.

One interface (:class:`EvidenceStore`) with interchangeable back ends. Nothing in the
service can change or overwrite an item once added; only the retention tools remove
one (:meth:`EvidenceStore.dispose`), and they keep a certificate when they do.

Keys are relative paths such as ``recordings/<consultation>/<recording>/seg-000001.webm``.
"""

from __future__ import annotations

from .store import (
    CHUNK,
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
    "ItemExists",
    "ItemMissing",
    "StoredItem",
    "check_key",
    "make_store",
]
