"""The evidence store interface and its files back end.

Every back end keeps only sealed containers (see :mod:`.crypto`): what callers add is
hashed (SHA-256 of the plaintext) and encrypted on the way in, and :meth:`read`
streams the plaintext back, checking every record. Back ends implement a handful of
blocking primitives on sealed bytes; this class runs them in worker threads.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, BinaryIO, Callable, Iterable, Iterator, Optional

from .crypto import CHUNK, MasterKey, Opener, load_key_file, load_master_key, master_key_path, seal_stream

if TYPE_CHECKING:
    from ..config import Settings

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
Chunks = Callable[[], Iterable[bytes]]


class ItemExists(Exception):
    """An item is already stored under that key (the store never overwrites)."""


class ItemMissing(KeyError):
    """No item is stored under that key."""


class StillLocked(Exception):
    """Some objects under a prefix cannot be removed yet: a retention lock (S3 Object
    Lock) keeps them until ``until``. What could go is gone (``removed`` of them);
    call :meth:`EvidenceStore.dispose_all_versions` again after ``until``."""

    def __init__(self, until: datetime, removed: int = 0) -> None:
        super().__init__(f"kept by a store retention lock until {until.isoformat()}")
        self.until = until
        self.removed = removed


@dataclass(frozen=True)
class Disposed:
    """What :meth:`EvidenceStore.dispose_all_versions` removed."""

    prefix: str
    #: Objects removed (files; on S3 every object version and delete marker).
    removed: int


@dataclass(frozen=True)
class StoredItem:
    key: str
    #: Plaintext size and SHA-256 (what was added, not the sealed bytes).
    size: int
    sha256: str


def check_key(key: str) -> str:
    """A key is a relative path of safe names: no '..', no leading '/', no oddities."""
    if not isinstance(key, str) or len(key) > 512 or not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"bad evidence key {key!r}")
    return key


class _Hasher:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def __call__(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)

    def check(self, key: str, expected: Optional[str]) -> None:
        if expected is not None and self.digest.hexdigest() != expected:
            raise ValueError(f"{key}: bytes do not match the expected SHA-256")


class EvidenceStore(ABC):
    """Add-only storage of evidence, encrypted at rest. Every add hashes what it stores."""

    def __init__(self, master: MasterKey) -> None:
        self.master = master

    # -- the interface -------------------------------------------------------

    async def add_file(
        self, key: str, path: Path, *, sha256: Optional[str] = None, retain_until: Optional[datetime] = None
    ) -> StoredItem:
        """Copy the file at ``path`` in under ``key``. When ``sha256`` is given the
        bytes stored must hash to it (re-verified on every move), else ``ValueError``.
        ``ItemExists`` when the key is taken."""
        return await asyncio.to_thread(self._add, check_key(key), lambda: _file_chunks(path), sha256, retain_until)

    async def add_bytes(
        self, key: str, data: bytes, *, sha256: Optional[str] = None, retain_until: Optional[datetime] = None
    ) -> StoredItem:
        """Store ``data`` under ``key`` (small items: manifests, signatures, PDFs)."""
        return await asyncio.to_thread(self._add, check_key(key), lambda: (data,), sha256, retain_until)

    async def add_sealed(
        self, key: str, path: Path, *, sha256: str, retain_until: Optional[datetime] = None
    ) -> StoredItem:
        """Store a container already sealed for ``key`` (a finished resumable upload)
        without re-encrypting it. It is opened and hashed first: every record must
        authenticate and the plaintext must hash to ``sha256``."""
        check_key(key)

        def verify_and_put() -> StoredItem:
            hasher = _Hasher()
            with open(path, "rb") as f:
                for chunk in Opener(self.master, key, f):
                    hasher(chunk)
            hasher.check(key, sha256)
            self._put_sealed_file(key, Path(path), retain_until)
            return StoredItem(key, hasher.size, sha256)

        return await asyncio.to_thread(verify_and_put)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The item's plaintext, in chunks, each record authenticated before it is
        given out (``IntegrityError`` on any alteration). ``ItemMissing`` when none."""
        f = await asyncio.to_thread(self._open, check_key(key))
        try:
            opener = await asyncio.to_thread(Opener, self.master, key, f)
            while (chunk := await asyncio.to_thread(opener.next_chunk)) is not None:
                yield chunk
        finally:
            await asyncio.to_thread(f.close)

    async def read_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(key)])

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._exists, check_key(key))

    async def check_existing(self, key: str, sha256: str) -> None:
        """An add found ``key`` taken (stored before a crash, by a retry that is now
        taking it up again): go on only when what is stored is the same item, its
        plaintext hashing to ``sha256``; otherwise ``ItemExists``."""
        digest = hashlib.sha256()
        async for chunk in self.read(key):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise ItemExists(key)

    async def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (an item's folder, e.g. ``recordings/<c>/<r>/``), sorted."""
        return sorted(await asyncio.to_thread(self._keys, prefix))

    async def dispose(self, key: str) -> None:
        """Remove every copy of an item (and, on S3, every version). For the retention tools only."""
        await asyncio.to_thread(self._dispose, check_key(key))

    async def dispose_all_versions(self, prefix: str) -> Disposed:
        """Remove every object under ``prefix`` (an item's keys) with every copy and
        version, for the retention tools only. Idempotent: a second call finds nothing.
        Raises ``StillLocked`` when a store lock keeps some versions for now. Back ends
        with versions or locks (S3) must override this; the default removes each key."""
        removed = 0
        for key in await self.keys(prefix):
            await self.dispose(key)
            removed += 1
        return Disposed(prefix, removed)

    async def retain(self, key: str, until: datetime) -> None:  # noqa: B027 (optional hook: no lock by default)
        """Extend the item's retention lock to ``until`` where the back end has one
        (S3 Object Lock); the files back end has none."""

    async def close(self) -> None:  # noqa: B027 (optional hook: nothing to release by default)
        """Release connections (nothing to do for files)."""

    # -- what a back end implements (blocking; run in worker threads) --------

    def _add(self, key: str, chunks: Chunks, expected: Optional[str], retain_until: Optional[datetime]) -> StoredItem:
        hasher = _Hasher()
        sealed = seal_stream(self.master, key, chunks(), hasher)
        self._put(key, sealed, lambda: hasher.check(key, expected), retain_until)
        return StoredItem(key, hasher.size, hasher.digest.hexdigest())

    @abstractmethod
    def _put(self, key: str, sealed: Iterator[bytes], check: Callable[[], None],
             retain_until: Optional[datetime]) -> None:
        """Write ``sealed`` under ``key``, calling ``check`` after the last byte and
        before the item becomes visible (if it raises, nothing is stored)."""

    def _put_sealed_file(self, key: str, path: Path, retain_until: Optional[datetime]) -> None:
        self._put(key, _file_chunks(path), lambda: None, retain_until)

    @abstractmethod
    def _open(self, key: str) -> BinaryIO:
        """The sealed bytes, as a stream with ``read(n)`` and ``close()``."""

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _dispose(self, key: str) -> None: ...


class FileStore(EvidenceStore):
    """Items as read-only files under a directory, written once via a temporary
    file, fsynced, and hard-linked into place (which fails if the name exists).

    Without a master key, the one under ``<root>/../keys/`` is used (made at first
    use): the layout of ``DATA/evidence`` and ``DATA/keys``.
    """

    def __init__(self, root: Path, master: Optional[MasterKey] = None) -> None:
        self.root = Path(root)
        super().__init__(master or load_key_file(master_key_path(self.root.parent)))

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _put(self, key: str, sealed: Iterator[bytes], check: Callable[[], None],
             retain_until: Optional[datetime]) -> None:
        target = self.path(key)
        if target.exists():
            raise ItemExists(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "xb") as out:
                for chunk in sealed:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            check()
            self._link(tmp, target, key)
        finally:
            tmp.unlink(missing_ok=True)

    def _put_sealed_file(self, key: str, path: Path, retain_until: Optional[datetime]) -> None:
        target = self.path(key)
        if target.exists():
            raise ItemExists(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._link(path, target, key)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            super()._put_sealed_file(key, path, retain_until)  # another file system: copy

    @staticmethod
    def _link(source: Path, target: Path, key: str) -> None:
        os.chmod(source, 0o400)  # written once, read by the service alone
        try:
            os.link(source, target)
        except FileExistsError:
            raise ItemExists(key) from None
        _fsync_dir(target.parent)

    def _open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise ItemMissing(key) from None

    def _exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def _keys(self, prefix: str) -> list[str]:
        base = self.path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        found = (p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
        return [str(p.relative_to(self.root)) for p in found]

    def _dispose(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        if path.parent.is_dir():
            _fsync_dir(path.parent)

    async def dispose_all_versions(self, prefix: str) -> Disposed:
        return await asyncio.to_thread(self._dispose_tree, prefix)

    def _dispose_tree(self, prefix: str) -> Disposed:
        """Unlink every file of the item's folder (leftover temporaries too), remove
        the folder, and fsync its parent once: one directory sync per item."""
        base = self.path(prefix.rstrip("/"))
        removed = 0
        if base.is_dir():
            for root, _dirs, files in os.walk(base, topdown=False):
                for name in files:
                    os.unlink(os.path.join(root, name))
                    removed += not name.startswith(".tmp-")
                os.rmdir(root)
        elif base.is_file():
            base.unlink()
            removed = 1
        else:
            return Disposed(prefix, 0)
        _fsync_dir(base.parent)
        return Disposed(prefix, removed)


def _file_chunks(path: Path) -> Iterator[bytes]:
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
    """The configured store: files under ``DATA/evidence`` (default) or S3."""
    master = load_master_key(settings)
    if settings.store == "s3":
        from .s3 import S3Store

        return S3Store.from_settings(settings, master)
    if settings.store != "files":
        raise ValueError(f"store must be 'files' or 's3', not {settings.store!r}")
    return FileStore(Path(settings.data_dir) / "evidence", master)
