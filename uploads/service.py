"""Uploads: staging resumable bytes sealed as they arrive, then ingest into the store.

While an upload is open its bytes live in ``DATA/uploads-staging/<id>.sealed``, already
encrypted (a sealed container for the item's final key, see :mod:`evr.evidence.crypto`)
and hashed as they stream in. The database row's ``offset``, ``staged_bytes`` and
``staged_records`` say how much of that file is committed: each PATCH appends, fsyncs,
then commits; a PATCH whose checksum fails (or that breaks off while checksummed) is cut
off the file again. When the last byte arrives the upload is *ingested*: its type is
detected from the content, metadata and a preview taken, the sealed file is verified
and moved into the evidence store unchanged, an exhibit reference is assigned and the
evidence item registered. Memory use does not depend on the size; metadata and the
preview are read by a worker process (:mod:`.worker`), never in the server.

Limits are checked when an upload is created, before any byte: its size, the link's
and the consultation's quotas (uploads started, and bytes declared by those not
cancelled or purged) and the free space of the staging disk less what unfinished
uploads may still send. The count and the insert happen in one transaction that holds
the database-wide lock of the audit log's transaction (and the consultation's row):
creations at once cannot pass a limit together.

Every change of state commits with its audit entry or not at all
(:meth:`evr.audit.AuditLog.transaction`): start, collection, exhibit reference,
termination and purge.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Optional

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..audit import Actor, AuditLog
from ..config import Settings
from ..db import Consultation, EvidenceItem, Upload
from ..errors import ApiError
from ..evidence import EvidenceStore, ItemExists
from ..evidence.crypto import CHUNK, HEADER_LEN, Opener, SealedReader, Sealer
from ..keys import write_private
from ..tasks import TaskSet
from ..timeutil import Clock
from . import content
from .worker import Inspector

log = logging.getLogger(__name__)

#: Checksum algorithms of the tus checksum extension.
CHECKSUMS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "md5": hashlib.md5}
#: Free space kept on the staging disk beyond an upload's own size.
DISK_MARGIN = 256 * 1024 * 1024


#: Statuses of uploads that hold (or may still receive) bytes.
GONE = ("terminated", "purged")


@dataclass(frozen=True)
class Uploader:
    """Who sends an upload: the audit log's actor, and a member of staff's user id
    (None for the victim, who has no account: the role ``victim`` says who it is)."""

    actor: Actor
    user_id: Optional[int] = None

    @property
    def is_victim(self) -> bool:
        return self.actor.role == "victim"


class ChecksumMismatch(Exception):
    """The PATCH body does not match its Upload-Checksum (it was discarded)."""


def prefix(consultation_id: str, upload_id: str) -> str:
    return f"uploads/{consultation_id}/{upload_id}/"


def original_key(upload: Upload) -> str:
    return prefix(upload.consultation_id, upload.id) + "original"


def preview_key(upload: Upload) -> str:
    return prefix(upload.consultation_id, upload.id) + "preview.jpg"


@dataclass
class Patch:
    """One PATCH request's body: read with ``read()`` (b"" at the end); ``declared``
    is its Content-Length when sent; ``checksum`` is (algorithm, digest) when sent."""

    read: Callable[[], Awaitable[bytes]]
    declared: Optional[int]
    checksum: Optional[tuple[str, bytes]]


class Uploads:
    def __init__(self, settings: Settings, clock: Clock, db: async_sessionmaker, store: EvidenceStore,
                 audit: AuditLog) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.store = store
        self.audit = audit
        self.master = store.master
        self.staging = settings.data_dir / "uploads-staging"
        self.allowed = content.allowed_types(settings.upload_allowed_types)
        self._hashes: dict[str, hashlib._Hash] = {}  # the running SHA-256 of what is staged
        self._locks: dict[str, asyncio.Lock] = {}
        self._ingests: dict[str, asyncio.Task[Upload]] = {}
        #: The ingests running: owned here, so stopping the service waits for them.
        self.tasks = TaskSet("uploads")
        self.inspector = Inspector(settings)

    def staged(self, upload_id: str) -> Path:
        return self.staging / f"{upload_id}.sealed"

    def lock(self, upload_id: str) -> asyncio.Lock:
        return self._locks.setdefault(upload_id, asyncio.Lock())

    # -- creation ------------------------------------------------------------

    async def create(self, consultation: Consultation, uploader: Uploader, length: int,
                     metadata: dict[str, str]) -> Upload:
        """A new upload of ``length`` bytes (nothing received yet), within every limit."""
        if length == 0:
            raise ApiError(422, "empty_file", "This file is empty: there is nothing to keep as evidence.")
        if length > self.settings.upload_max_bytes:
            raise ApiError(413, "too_large", f"Files up to {self.settings.upload_max_bytes} bytes are accepted.",
                           max_bytes=self.settings.upload_max_bytes)
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = self.clock()
        name = metadata.get("filename") or metadata.get("name") or ""
        who = uploader.actor
        upload = Upload(
            id=str(uuid.uuid4()), consultation_id=consultation.id, status="uploading",
            uploaded_by=who.name[:64], uploader_role=who.role[:16], uploader_id=uploader.user_id,
            client=(who.client or "")[:64] or None,
            original_name=name[:4096], filename=content.sanitise_filename(name),
            declared_type=(metadata.get("filetype") or metadata.get("type") or "")[:255] or None,
            length=length, offset=0, staged_bytes=HEADER_LEN, staged_records=0,
            created_at=now, updated_at=now, has_preview=False, meta={},
        )
        sealer = Sealer(self.master, original_key(upload))
        path = self.staged(upload.id)
        await asyncio.to_thread(self._new_staging_file, path, sealer.header)
        try:
            async with self.audit.transaction() as tx:
                await self._check_limits(tx.db, consultation.id, uploader, length)
                tx.db.add(upload)
                tx.add(who, "upload.start", f"upload:{upload.id}", consultation_id=consultation.id,
                       details={"filename": upload.filename, "length": length})
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise
        self._hashes[upload.id] = hashlib.sha256()
        log.info("upload started (id=%s consultation=%s role=%s length=%d)", upload.id, consultation.id,
                 upload.uploader_role, length)
        return upload

    async def _check_limits(self, db: AsyncSession, consultation_id: str, uploader: Uploader, length: int) -> None:
        """Refuse an upload past a quota or the free space (413, 507), counting in the
        caller's transaction (which holds the database-wide lock, see the module)."""
        s = self.settings
        # Also lock the consultation's row (PostgreSQL): the count and the insert stay
        # atomic per consultation even without the audit log's lock.
        await db.execute(select(Consultation.id).where(Consultation.id == consultation_id).with_for_update())
        held = case((Upload.status.in_(GONE), 0), else_=Upload.length)
        counts = select(func.count(), func.coalesce(func.sum(held), 0)).where(Upload.consultation_id == consultation_id)
        limits = [("consultation", counts, s.upload_consultation_max_files, s.upload_consultation_max_bytes)]
        if uploader.is_victim:
            limits.insert(0, ("link", counts.where(Upload.uploader_role == "victim"),
                              s.upload_link_max_files, s.upload_link_max_bytes))
        for scope, query, max_files, max_bytes in limits:
            files, size = (await db.execute(query)).one()
            if files + 1 > max_files:
                raise ApiError(413, "upload_quota_files", f"At most {max_files} files can be sent for this {scope}.",
                               scope=scope, limit=max_files)
            if int(size) + length > max_bytes:
                raise ApiError(413, "upload_quota_bytes",
                               f"At most {max_bytes} bytes can be sent for this {scope}; {int(size)} are taken.",
                               scope=scope, limit=max_bytes, used=int(size))
        # What unfinished uploads may still send is spoken for on the staging disk.
        reserved = await db.scalar(select(func.coalesce(func.sum(Upload.length - Upload.offset), 0)).where(
            Upload.status == "uploading"))
        free = (await asyncio.to_thread(shutil.disk_usage, self.staging)).free
        if free - int(reserved or 0) - DISK_MARGIN < length:
            raise ApiError(507, "insufficient_storage", "There is not enough space for this file now; try later.")

    @staticmethod
    def _new_staging_file(path: Path, header: bytes) -> None:
        write_private(path, header)

    # -- bytes ---------------------------------------------------------------

    async def append(self, upload_id: str, offset: int, patch: Patch) -> Upload:
        """Append a PATCH body at ``offset``; return the row after it (ingested when complete)."""
        lock = self.lock(upload_id)
        if lock.locked():
            raise ApiError(423, "upload_busy", "Another request is still sending to this upload; retry shortly.")
        async with lock:
            async with self.db() as db:
                upload = await db.get(Upload, upload_id)
            if upload is None:
                raise ApiError(404, "not_found", "No such upload.")
            if upload.status != "uploading" or upload.offset == upload.length:
                if offset == upload.offset and not patch.declared and upload.status != "uploading":
                    return upload
                raise ApiError(409, "upload_finished", "This upload has already finished.", offset=upload.offset)
            if offset != upload.offset:
                raise ApiError(409, "wrong_offset", f"Upload-Offset must be {upload.offset}.", offset=upload.offset)
            if patch.declared is not None and offset + patch.declared > upload.length:
                raise ApiError(413, "exceeds_length", "The body goes past the upload's declared length.")
            upload = await self._append(upload, patch)
        if upload.offset == upload.length and upload.status == "uploading":
            upload = await self.ingest(upload.id)
        return upload

    async def _append(self, upload: Upload, patch: Patch) -> Upload:
        path = self.staged(upload.id)
        key = original_key(upload)
        f = await asyncio.to_thread(open, path, "r+b")
        try:
            header = await asyncio.to_thread(_header_and_truncate, f, upload.staged_bytes)
            sealer = Sealer(self.master, key, header, upload.staged_records)
            # Hash a copy: the running hash moves on only when the PATCH is kept.
            hasher = (await self._running_hash(upload)).copy()
            check = CHECKSUMS[patch.checksum[0]]() if patch.checksum else None
            remaining = upload.length - upload.offset
            received = 0

            def seal(data: bytes, final: bool) -> None:
                hasher.update(data)
                if check is not None:
                    check.update(data)
                f.write(sealer.seal(data, final))

            buffer = bytearray()  # at most CHUNK + one read
            writing: Optional[asyncio.Future[None]] = None
            broken: Optional[Exception] = None
            while True:
                try:
                    data = await patch.read()
                except Exception as exc:  # the client went away mid-body
                    broken = exc
                    break
                if not data:
                    break
                if received + len(data) > remaining:
                    broken = ApiError(413, "exceeds_length", "The body goes past the upload's declared length.")
                    break
                received += len(data)
                buffer += data
                while len(buffer) >= CHUNK:
                    piece = bytes(buffer[:CHUNK])
                    del buffer[:CHUNK]
                    if writing is not None:
                        await writing
                    final = received == remaining and not buffer
                    writing = asyncio.ensure_future(asyncio.to_thread(seal, piece, final))
            if writing is not None:
                await writing
            keep = broken is None or (check is None and not isinstance(broken, ApiError))
            if keep and buffer:
                await asyncio.to_thread(seal, bytes(buffer), received == remaining)
            if keep and check is not None and patch.checksum and check.digest() != patch.checksum[1]:
                keep, broken = False, ChecksumMismatch()
            if not keep:
                # Discard the whole body: the next PATCH starts from the old offset.
                log.info("upload %s: PATCH discarded (%s)", upload.id, type(broken).__name__)
                raise broken  # type: ignore[misc]
            await asyncio.to_thread(_sync, f)
            self._hashes[upload.id] = hasher
            async with self.db() as db:
                row = await db.get(Upload, upload.id)
                assert row is not None
                row.offset = upload.offset + received
                row.staged_bytes = f.tell()
                row.staged_records = sealer.records
                row.updated_at = self.clock()
                await db.commit()
                if broken is not None:
                    log.info("upload %s: connection lost at offset %d (kept)", upload.id, row.offset)
                return row
        finally:
            await asyncio.to_thread(f.close)

    async def _running_hash(self, upload: Upload) -> hashlib._Hash:
        """The running SHA-256 of what is staged: kept since the last PATCH, or rehashed."""
        hasher = self._hashes.get(upload.id)
        return hasher if hasher is not None else await asyncio.to_thread(self._rehash, upload)

    def _rehash(self, upload: Upload) -> hashlib._Hash:
        """The running SHA-256 of what is staged (after a restart): decrypt and hash it."""
        hasher = hashlib.sha256()
        with open(self.staged(upload.id), "rb") as f:
            opener = Opener(self.master, original_key(upload), f)
            for _ in range(upload.staged_records):
                hasher.update(opener.next_chunk() or b"")
        return hasher

    # -- ingest --------------------------------------------------------------

    async def close(self, grace: float = 10.0) -> None:
        """Stop: ingests under way get ``grace`` seconds to finish (one cut short is
        finished at the next start, :meth:`recover`), then the preview workers go."""
        await self.tasks.wait(timeout=grace)
        await self.tasks.close()
        await self.inspector.close()

    async def ingest(self, upload_id: str) -> Upload:
        """Finish a fully received upload. Runs as its own task: a client that goes away
        meanwhile does not stop it, and a second caller waits for the same one."""
        task = self._ingests.get(upload_id)
        if task is None:
            task = self.tasks.spawn(self._ingest(upload_id), f"ingest {upload_id}")
            self._ingests[upload_id] = task
            task.add_done_callback(lambda _: self._ingests.pop(upload_id, None))
        return await asyncio.shield(task)

    async def _ingest(self, upload_id: str) -> Upload:
        async with self.db() as db:
            upload = await db.get(Upload, upload_id)
        assert upload is not None
        if upload.status != "uploading":
            return upload
        path = self.staged(upload.id)
        started = time.monotonic()
        hasher = await self._running_hash(upload)
        sha256 = hasher.hexdigest()
        detected, allowed, found = await self._examine(upload, path)
        key = original_key(upload)
        try:
            await self.store.add_sealed(key, path, sha256=sha256)
        except ItemExists:  # stored before a crash: make sure it is this upload
            await self.store.check_existing(key, sha256)
        if found.preview is not None and not await self.store.exists(preview_key(upload)):
            await self.store.add_bytes(preview_key(upload), found.preview)
        # The store is add-only: what was added above stays if this transaction fails,
        # and a retry (the next start's recover()) finds it and goes on.
        async with self.audit.transaction() as tx:
            db = tx.db
            row = await db.get(Upload, upload.id)
            consultation = await db.get(Consultation, upload.consultation_id)
            assert row is not None and consultation is not None
            if row.status != "uploading":
                return row
            number = 1 + (await db.scalar(
                select(func.count()).select_from(Upload).where(
                    Upload.consultation_id == upload.consultation_id, Upload.exhibit_ref.is_not(None))
            ) or 0)
            now = self.clock()
            row.status = "complete" if allowed else "quarantined"
            row.sha256 = sha256
            row.content_type = detected
            row.meta = found.meta
            row.has_preview = found.preview is not None
            row.preview_skipped = found.skipped
            row.quarantine_reason = None if allowed else (
                f"The content is {detected}, which is not an accepted evidence type; kept in quarantine.")
            row.exhibit_ref = f"{_initials(consultation, row)}/{number}"
            row.completed_at = now
            db.add(EvidenceItem(id=row.id, kind="upload", consultation_id=row.consultation_id,
                                prefix=prefix(row.consultation_id, row.id), created_at=now, sha256=sha256,
                                size=row.length))
            tx.add(Actor(row.uploaded_by, row.uploader_role, row.client), "upload.collect", f"upload:{row.id}",
                   consultation_id=row.consultation_id,
                   details={"filename": row.filename, "original_name": row.original_name, "size": row.length,
                            "sha256": sha256, "content_type": detected, "exhibit_ref": row.exhibit_ref,
                            "status": row.status, "uploader_id": row.uploader_id,
                            "preview_skipped": row.preview_skipped})
        self._hashes.pop(upload.id, None)
        self._locks.pop(upload.id, None)
        await asyncio.to_thread(path.unlink, True)
        log.info("upload %s (id=%s consultation=%s size=%d sha256=%s type=%s; ingested in %.1f s)", row.status,
                 row.id, row.consultation_id, row.length, sha256, detected, time.monotonic() - started)
        return row

    async def _examine(self, upload: Upload, path: Path) -> tuple[str, bool, content.Inspection]:
        """The detected type, whether it is accepted, and what the worker found
        (metadata, and a preview only for an accepted type)."""
        reader = await asyncio.to_thread(SealedReader, self.master, original_key(upload), path)
        try:
            detected = content.detect(await asyncio.to_thread(reader.read, content.SNIFF_BYTES))
            allowed = content.is_allowed(detected, self.allowed)
            if not content.inspectable(detected):
                return detected, allowed, content.Inspection({})
            found = await self.inspector.inspect(reader, reader.length, detected, preview=allowed)
        finally:
            await asyncio.to_thread(reader.close)
        if found.skipped:
            log.info("upload %s: no preview (%s)", upload.id, found.skipped)
        return detected, allowed, found

    # -- the exhibit reference -----------------------------------------------

    async def set_exhibit_ref(self, upload_id: str, ref: str, who: Actor) -> Upload:
        """Change a finished upload's exhibit reference, with its audit entry."""
        async with self.audit.transaction() as tx:
            row = await tx.db.get(Upload, upload_id)
            assert row is not None
            if row.status not in ("complete", "quarantined"):
                raise ApiError(409, "not_finished", "An exhibit reference is given once the upload has finished.")
            before, row.exhibit_ref = row.exhibit_ref, ref
            tx.add(who, "upload.exhibit_ref", f"upload:{row.id}", consultation_id=row.consultation_id,
                   details={"from": before, "to": ref})
        return row

    # -- ending without content ----------------------------------------------

    async def terminate(self, upload: Upload, actor: Actor) -> None:
        """The sender cancelled an unfinished upload: its bytes go, its record stays."""
        await self._drop(upload.id, "terminated", actor, "upload.terminate")

    async def purge_stale(self) -> int:
        """Purge unfinished uploads with no bytes for ``upload_partial_days``."""
        cutoff = self.clock() - timedelta(days=self.settings.upload_partial_days)
        async with self.db() as db:
            stale = list(await db.scalars(
                select(Upload.id).where(Upload.status == "uploading", Upload.updated_at < cutoff)))
        for upload_id in stale:
            await self._drop(upload_id, "purged", Actor.system(), "upload.purge")
        return len(stale)

    async def _drop(self, upload_id: str, status: Literal["terminated", "purged"], actor: Actor,
                    action: str) -> None:
        async with self.lock(upload_id):
            async with self.audit.transaction() as tx:
                row = await tx.db.get(Upload, upload_id)
                if row is None or row.status != "uploading" or row.offset == row.length:
                    return
                row.status = status
                row.updated_at = self.clock()
                tx.add(actor, action, f"upload:{upload_id}", consultation_id=row.consultation_id,
                       details={"filename": row.filename, "received": row.offset, "length": row.length})
            await asyncio.to_thread(self.staged(upload_id).unlink, True)
        self._hashes.pop(upload_id, None)
        self._locks.pop(upload_id, None)
        log.info("upload %s (id=%s consultation=%s received=%d of %d)", status, upload_id, row.consultation_id,
                 row.offset, row.length)

    async def recover(self) -> None:
        """At start: ingest uploads whose last byte arrived just before a stop."""
        async with self.db() as db:
            done = list(await db.scalars(
                select(Upload.id).where(Upload.status == "uploading", Upload.offset == Upload.length)))
        for upload_id in done:
            try:
                await self.ingest(upload_id)
            except Exception:
                log.exception("could not finish upload %s; will retry at next start", upload_id)


def _header_and_truncate(f: Any, committed: int) -> bytes:
    """The staging file's header; anything past the committed size (a PATCH cut off by
    a crash) is dropped."""
    f.truncate(committed)
    f.seek(0)
    header = f.read(HEADER_LEN)
    f.seek(committed)
    return header


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _initials(consultation: Consultation, upload: Upload) -> str:
    """Exhibits are numbered under the producer's initials (the victim's when known)."""
    name = (consultation.victim or {}).get("name", "") if upload.uploader_role == "victim" else upload.uploaded_by
    letters = "".join(part[0] for part in name.replace(".", " ").split() if part[:1].isalpha()).upper()
    return letters[:4] or "EVR"


#: A tus metadata key: printable ASCII, no space or comma.
_METADATA_KEY = re.compile(r"[!-+\--~]+")


def decode_metadata(header: str) -> dict[str, str]:
    """tus Upload-Metadata: ``key base64,key base64,key`` (keys ASCII, values base64
    of UTF-8); a 400 for anything else (undecodable header bytes arrive as lone
    surrogates and are refused here, never stored)."""
    found: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        if not _METADATA_KEY.fullmatch(key):
            raise ApiError(400, "bad_metadata", "Upload-Metadata keys are ASCII letters, digits and punctuation.")
        try:
            # NUL cannot be stored (PostgreSQL text): kept visibly as U+FFFD.
            found[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8").replace("\x00", "\ufffd")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "bad_metadata", "Upload-Metadata values must be base64 of UTF-8 text.") from None
    return found


#: How often unfinished uploads are checked for purging (seconds).
PURGE_INTERVAL = 3600.0


async def purge_forever(uploads: Uploads) -> None:
    """Inside ``evr serve``: purge unfinished uploads past their days, every hour."""
    while True:
        try:
            purged = await uploads.purge_stale()
            if purged:
                log.info("purged %d unfinished upload(s) older than %s days", purged,
                         uploads.settings.upload_partial_days)
        except Exception:
            log.exception("purging unfinished uploads failed")
        await asyncio.sleep(PURGE_INTERVAL)
