"""The evidence store interface and its files back end."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Optional

if TYPE_CHECKING:
    from ..config import Settings

#: Bytes read or written at a time.
CHUNK = 1024 * 1024
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class ItemExists(Exception):
    """An item is already stored under that key (the store never overwrites)."""


class ItemMissing(KeyError):
    """No item is stored under that key."""


@dataclass(frozen=True)
class StoredItem:
    key: str
    size: int
    sha256: str


def check_key(key: str) -> str:
    """A key is a relative path of safe names: no '..', no leading '/', no oddities."""
    if not isinstance(key, str) or len(key) > 512 or not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"bad evidence key {key!r}")
    return key


class EvidenceStore(ABC):
    """Add-only storage of evidence. Every add hashes what it stores."""

    @abstractmethod
    async def add_file(
        self, key: str, path: Path, *, sha256: Optional[str] = None, retain_until: Optional[datetime] = None
    ) -> StoredItem:
        """Copy the file at ``path`` in under ``key``. When ``sha256`` is given the
        bytes stored must hash to it (re-verified on every move), else ``ValueError``.
        ``ItemExists`` when the key is taken."""

    async def add_bytes(
        self, key: str, data: bytes, *, sha256: Optional[str] = None, retain_until: Optional[datetime] = None
    ) -> StoredItem:
        """Store ``data`` under ``key`` (small items: manifests, signatures, PDFs)."""
        return await self._add_bytes(key, data, sha256=sha256, retain_until=retain_until)

    @abstractmethod
    async def _add_bytes(
        self, key: str, data: bytes, *, sha256: Optional[str], retain_until: Optional[datetime]
    ) -> StoredItem: ...

    @abstractmethod
    def read(self, key: str) -> AsyncIterator[bytes]:
        """The item's bytes, in chunks. ``ItemMissing`` when there is none."""

    async def read_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(key)])

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (an item's folder, e.g. ``recordings/<c>/<r>/``), sorted."""

    @abstractmethod
    async def dispose(self, key: str) -> None:
        """Remove every copy of an item. For the retention tools only."""

    async def close(self) -> None:
        """Release connections (nothing to do for files)."""


class FileStore(EvidenceStore):
    """Items as read-only files under a directory, written once via a temporary
    file, fsynced, and hard-linked into place (which fails if the name exists)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def add_file(
        self, key: str, path: Path, *, sha256: Optional[str] = None, retain_until: Optional[datetime] = None
    ) -> StoredItem:
        target = self.path(key)
        return await asyncio.to_thread(self._add, target, key, lambda: _file_chunks(path), sha256)

    async def _add_bytes(
        self, key: str, data: bytes, *, sha256: Optional[str], retain_until: Optional[datetime]
    ) -> StoredItem:
        target = self.path(key)
        return await asyncio.to_thread(self._add, target, key, lambda: iter((data,)), sha256)

    def _add(self, target: Path, key: str, chunks, expected: Optional[str]) -> StoredItem:
        if target.exists():
            raise ItemExists(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "xb") as out:
                for chunk in chunks():
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected is not None and digest.hexdigest() != expected:
                raise ValueError(f"{key}: bytes do not match the expected SHA-256")
            os.chmod(tmp, 0o440)
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise ItemExists(key) from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return StoredItem(key, size, digest.hexdigest())

    async def read(self, key: str) -> AsyncIterator[bytes]:  # type: ignore[override]
        path = self.path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise ItemMissing(key) from None
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    async def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    async def keys(self, prefix: str) -> list[str]:
        base = self.path(prefix.rstrip("/"))

        def walk() -> list[str]:
            if not base.is_dir():
                return []
            found = (p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
            return sorted(str(p.relative_to(self.root)) for p in found)

        return await asyncio.to_thread(walk)

    async def dispose(self, key: str) -> None:
        path = self.path(key)
        await asyncio.to_thread(path.unlink, True)
        await asyncio.to_thread(_fsync_dir, path.parent)


def _file_chunks(path: Path):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_store(settings: "Settings") -> EvidenceStore:
    """The configured store (files under ``DATA/evidence`` by default)."""
    return FileStore(Path(settings.data_dir) / "evidence")
