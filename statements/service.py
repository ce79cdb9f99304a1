"""Statements: drafting (versioned), sending, a change asked for, signing and sealing.

Every state change is one conditional UPDATE (``WHERE status = ... AND version = ...``),
so two browsers, two tabs or two server processes can never both win: the loser
gets 409. Sealing renders the same layout the witness was shown with their signature
in the reserved places, signs it as PAdES and adds it, with the signature image and
the signing record, to the evidence store (add-only) under ``statements/<c>/<s>/``.
A disclosure copy is drawn again from what was sealed, without the rear page, and
signed alike; the original is only read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
import struct
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional, cast

from PIL import Image, ImageChops
from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from evr.audit import Actor, AuditLog
from evr.config import Settings
from evr.db import Consultation, EvidenceItem, Statement, StatementEvent, StatementSignature, StatementVersion
from evr.errors import ApiError, not_found
from evr.evidence import IntegrityError, ItemMissing
from evr.timeutil import Clock, rfc3339

from . import content as sc
from .layout import Disclosure, Document, Layout, Signed, paginate, render
from .signing import Identity, seal

log = logging.getLogger(__name__)

#: Largest signature image accepted (decoded PNG bytes) and its largest sides.
MAX_SIGNATURE_BYTES = 512 * 1024
MAX_SIGNATURE_SIDE = 4000
#: And its largest area: the signing pad is 600x200; 4 megapixels decode to 16 MB of RGBA.
MAX_SIGNATURE_PIXELS = 4_000_000
#: Pixels of ink (not blank, not transparent) below which a signature is empty.
MIN_INK_PIXELS = 40
EDITABLE = ("draft", "awaiting_signature")
PDF_NAME = "statement.pdf"
PNG_PREFIX = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def prefix(consultation_id: str, statement_id: str) -> str:
    return f"statements/{consultation_id}/{statement_id}/"


@dataclass(frozen=True)
class Rendered:
    """A version laid out, and its unsigned PDF: what the witness is shown."""

    doc: Document
    layout: Layout
    preview: bytes
    preview_sha256: str


@dataclass(frozen=True)
class SignatureImage:
    original: bytes
    sha256: str
    #: Cropped to the ink and re-encoded: what the PDF carries.
    cropped: bytes
    width: int
    height: int


@dataclass(frozen=True)
class DisclosureCopy:
    """A sealed statement's disclosure copy (its rear page withheld), signed by the service."""

    statement_id: str
    version: int
    pdf: bytes
    sha256: str
    #: The sealed original's SHA-256, printed on every page of the copy.
    original_sha256: str
    #: Its pages: the original's statement pages, all of them.
    pages: int

    @property
    def filename(self) -> str:
        return f"statement-{self.statement_id}-disclosure.pdf"


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def _refused(code: str, message: str) -> ApiError:
    return ApiError(422, code, message, fields=["signature_png"])


def png_size(raw: bytes) -> tuple[int, int]:
    """The width and height a PNG declares in its header (IHDR, which must come first),
    read without decoding anything; :class:`ValueError` when there is no such header."""
    if len(raw) < 33 or not raw.startswith(PNG_SIGNATURE) or raw[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ValueError("no PNG header")
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def check_signature(data_url: Any) -> SignatureImage:
    """A drawn signature as a PNG data URL: 422 when absent, oversize, not a PNG, or blank.

    Everything here is the witness's browser's (or an attacker's) bytes: the size is
    checked before base64 decoding, and the dimensions the PNG declares before Pillow
    decodes a pixel, so a small file declaring a huge image (a decompression bomb)
    costs nothing. Any failure to read it is a 422, never a 500."""
    if not isinstance(data_url, str) or not data_url.startswith(PNG_PREFIX):
        raise _refused("invalid_signature", "signature_png must be a data:image/png;base64 URL.")
    encoded = data_url[len(PNG_PREFIX):]
    too_large = f"The signature image is larger than {MAX_SIGNATURE_BYTES // 1024} KiB."
    if len(encoded) > (MAX_SIGNATURE_BYTES * 4) // 3 + 4:
        raise _refused("signature_too_large", too_large)
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise _refused("invalid_signature", "signature_png is not valid base64.") from None
    if not raw:
        raise _refused("empty_signature", "The signature is empty: sign in the box.")
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise _refused("signature_too_large", too_large)
    return signature_image(raw)


def signature_image(raw: bytes) -> SignatureImage:
    """A signature PNG's bytes checked and cropped to the ink: what :func:`check_signature`
    does once the data URL is decoded, and what a disclosure copy does again with the
    stored image (the same bytes give the same crop, so the copy draws what was sealed)."""
    try:
        width, height = png_size(raw)
    except ValueError:
        raise _refused("invalid_signature", "signature_png is not a PNG image.") from None
    if not (0 < width <= MAX_SIGNATURE_SIDE and 0 < height <= MAX_SIGNATURE_SIDE) \
            or width * height > MAX_SIGNATURE_PIXELS:
        raise _refused("signature_too_large", f"The signature image is larger than {MAX_SIGNATURE_SIDE} pixels a "
                                              f"side or {MAX_SIGNATURE_PIXELS // 1_000_000} million pixels.")
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            if image.format != "PNG" or image.size != (width, height):
                raise ValueError("not the PNG its header declares")
            rgba = image.convert("RGBA")
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on damaged data; all are the sender's fault
        raise _refused("invalid_signature", "signature_png is not a readable PNG image.") from None
    # Ink: visible (alpha) and darker than paper.
    opaque = rgba.getchannel("A").point(lambda a: 255 if a > 32 else 0)
    dark = rgba.convert("L").point(lambda v: 255 if v < 200 else 0)
    ink = ImageChops.multiply(opaque, dark)
    bbox = ink.getbbox()
    if ink.histogram()[255] < MIN_INK_PIXELS or bbox is None:
        raise ApiError(422, "empty_signature", "The signature is empty: sign in the box.", fields=["signature_png"])
    left, top, right, bottom = bbox
    pad = 4
    box = (max(0, left - pad), max(0, top - pad), min(rgba.width, right + pad), min(rgba.height, bottom + pad))
    cropped = rgba.crop(box)
    out = io.BytesIO()
    cropped.save(out, "PNG", optimize=True)
    return SignatureImage(raw, hashlib.sha256(raw).hexdigest(), out.getvalue(), cropped.width, cropped.height)


def check_typed_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ApiError(422, "invalid_typed_name", "Type your full name (up to 200 characters).",
                       fields=["typed_name"])
    checker = sc._Checker()
    name = checker.text(value, "typed_name", 200)
    if checker.failed:
        raise ApiError(422, "invalid_typed_name", "Your name holds characters that cannot be printed.",
                       fields=["typed_name"])
    return name


def default_identification(officer: str) -> str:
    return (f"Seen and spoken to by {officer} on the recorded video call; signed in the browser the "
            "consultation's link is bound to.")


class Statements:
    def __init__(self, settings: Settings, clock: Clock, db: Any, store: Any, audit: AuditLog,
                 identity: Identity) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.store = store
        self.audit = audit
        self.identity = identity
        self._rendered: OrderedDict[tuple[str, int, str], Rendered] = OrderedDict()

    # -- reading -------------------------------------------------------------------

    async def get(self, db: AsyncSession, consultation: Consultation, statement_id: str) -> Statement:
        try:
            uuid.UUID(statement_id)
        except ValueError:
            raise not_found("No such statement.") from None
        found = await db.scalar(select(Statement).where(
            Statement.id == statement_id, Statement.consultation_id == consultation.id))
        if found is None:
            raise not_found("No such statement.")
        return found

    async def version(self, db: AsyncSession, statement: Statement, number: Optional[int] = None
                      ) -> StatementVersion:
        row = await db.get(StatementVersion, (statement.id, number or statement.version))
        if row is None:
            raise not_found("No such version.")
        return row

    async def rendered(self, consultation: Consultation, statement: Statement, version: StatementVersion,
                       officer: str) -> Rendered:
        """The version laid out and its unsigned PDF (cached: a version never changes)."""
        key = (statement.id, version.version, officer)
        if key in self._rendered:
            self._rendered.move_to_end(key)
            return self._rendered[key]
        doc = Document(statement.id, version.version, consultation.cad_ref, self.settings.force_name, officer,
                       version.content)

        def work() -> Rendered:
            layout = paginate(doc)
            pdf = render(doc, layout, version.saved_at, tz=self.settings.statement_timezone or self.settings.timezone)
            return Rendered(doc, layout, pdf, hashlib.sha256(pdf).hexdigest())

        made = await asyncio.to_thread(work)
        self._rendered[key] = made
        while len(self._rendered) > 32:
            self._rendered.popitem(last=False)
        return made

    async def current(self, consultation: Consultation, statement: Statement, officer: str
                      ) -> tuple[StatementVersion, Rendered]:
        """The newest version, and it laid out for ``officer`` (the signature's witness)."""
        async with self.db() as db:
            version = await self.version(db, statement)
        return version, await self.rendered(consultation, statement, version, officer)

    # -- drafting --------------------------------------------------------------------

    async def uploads(self, db: AsyncSession, consultation: Consultation, body: Any) -> dict[str, dict[str, Any]]:
        """The consultation's finished uploads that exhibits in ``body`` name."""
        exhibits = body.get("exhibits") if isinstance(body, dict) else None
        if not isinstance(exhibits, list) or len(exhibits) > sc.MAX_EXHIBITS:
            return {}  # content.parse refuses it
        wanted = [e["upload_id"] for e in exhibits
                  if isinstance(e, dict) and isinstance(e.get("upload_id"), str) and _is_uuid(e["upload_id"])]
        if not wanted:
            return {}
        from evr.db import Upload  # the uploads feature's table

        rows = await db.scalars(select(Upload).where(
            Upload.consultation_id == consultation.id, Upload.id.in_(wanted),
            Upload.status.in_(("complete", "quarantined"))))
        return {u.id: {"filename": u.filename, "sha256": u.sha256, "exhibit_ref": u.exhibit_ref} for u in rows}

    def _event(self, db: AsyncSession, statement: Statement, kind: str, actor: str, text: Optional[str] = None
               ) -> None:
        db.add(StatementEvent(statement_id=statement.id, at=self.clock(), kind=kind, version=statement.version,
                              actor=actor[:64], text=text))

    async def create(self, consultation: Consultation, who: Actor, content: dict[str, Any]) -> Statement:
        """A new draft (version 1), with its audit entry in the same transaction."""
        now = self.clock()
        async with self.audit.transaction() as tx:
            db = tx.db
            statement = Statement(id=str(uuid.uuid4()), consultation_id=consultation.id, status="draft", version=1,
                                  created_by=who.name, created_at=now, updated_at=now)
            db.add(statement)
            await db.flush()
            digest = sc.content_hash(content)
            db.add(StatementVersion(statement_id=statement.id, version=1, content=content,
                                    content_sha256=digest, saved_by=who.name, saved_at=now))
            self._event(db, statement, "created", who.name)
            tx.add(who, "statement.create", f"statement:{statement.id}", consultation_id=consultation.id,
                   details={"version": 1, "content_sha256": digest})
        return statement

    async def _fresh(self, db: AsyncSession, statement: Statement) -> Statement:
        """The statement as it is now, read inside the transaction that changes it."""
        found = await db.get(Statement, statement.id, populate_existing=True)
        if found is None:  # pragma: no cover - statements are never deleted
            raise not_found("No such statement.")
        return found

    async def save(self, statement: Statement, who: Actor, content: dict[str, Any], base: Optional[int]
                   ) -> tuple[Statement, bool, bool]:
        """A new version when the content differs: (statement, saved, signature cancelled).
        The version, its events and its audit entry commit together, or none of them."""
        async with self.audit.transaction() as tx:
            db = tx.db
            statement = await self._fresh(db, statement)
            if statement.status not in EDITABLE:
                raise conflict("statement_signed" if statement.status == "signed" else "statement_sealing",
                               "This statement has been signed and can no longer change."
                               if statement.status == "signed" else "This statement is being signed right now.")
            if base is not None and base != statement.version:
                raise conflict("version_conflict", f"This statement is at version {statement.version}, not {base}: "
                                                   "reload it before saving.")
            current = await self.version(db, statement)
            digest = sc.content_hash(content)
            if digest == current.content_sha256:
                return statement, False, False
            now = self.clock()
            was = statement.status
            result = await db.execute(
                update(Statement).where(Statement.id == statement.id, Statement.version == statement.version,
                                        Statement.status.in_(EDITABLE))
                .values(version=statement.version + 1, status="draft", updated_at=now, sent_at=None, sent_by=None)
                .execution_options(synchronize_session=False))
            if cast(CursorResult[Any], result).rowcount != 1:
                raise conflict("version_conflict", "The statement changed meanwhile: reload it before saving.")
            number = statement.version + 1
            db.add(StatementVersion(statement_id=statement.id, version=number, content=content,
                                    content_sha256=digest, saved_by=who.name, saved_at=now))
            await db.flush()
            await db.refresh(statement)
            cancelled = was == "awaiting_signature"
            if cancelled:
                self._event(db, statement, "signature_cancelled", who.name)
            self._event(db, statement, "saved", who.name)
            tx.add(who, "statement.save", f"statement:{statement.id}", consultation_id=statement.consultation_id,
                   details={"version": number, "content_sha256": digest, "signature_cancelled": cancelled})
        return statement, True, cancelled

    async def send(self, consultation: Consultation, statement: Statement, who: Actor,
                   identification: Optional[str], base: Optional[int] = None) -> tuple[Statement, bool]:
        """Send for signature: (statement, sent); not sent when it already was (nothing
        changed). The change and its audit entry commit together."""
        if consultation.status == "closed":
            raise ApiError(410, "consultation_closed", "The consultation is closed: its link can no longer sign.")
        async with self.audit.transaction() as tx:
            db = tx.db
            statement = await self._fresh(db, statement)
            if base is not None and base != statement.version:
                raise conflict("version_conflict", f"This statement is at version {statement.version}, not {base}.")
            if statement.status == "awaiting_signature":
                return statement, False
            if statement.status != "draft":
                raise conflict("statement_signed", "This statement has already been signed.")
            current = await self.version(db, statement)
            needed = sc.missing(current.content)
            if needed:
                raise ApiError(422, "incomplete", "Before sending, fill in: " + ", ".join(needed) + ".",
                               fields=needed)
            result = await db.execute(
                update(Statement).where(Statement.id == statement.id, Statement.status == "draft",
                                        Statement.version == statement.version)
                .values(status="awaiting_signature", sent_by=who.name, sent_at=self.clock(), updated_at=self.clock(),
                        identification=identification or default_identification(who.name))
                .execution_options(synchronize_session=False))
            if cast(CursorResult[Any], result).rowcount != 1:
                raise conflict("version_conflict", "The statement changed meanwhile: reload it and send again.")
            await db.refresh(statement)
            self._event(db, statement, "sent", who.name)
            tx.add(who, "statement.send", f"statement:{statement.id}", consultation_id=consultation.id,
                   details={"version": statement.version})
        return statement, True

    async def request_change(self, statement: Statement, who: Actor, text: str) -> Statement:
        """The witness asks for a change: back to draft with their words, and the audit
        entry, in one transaction."""
        async with self.audit.transaction() as tx:
            db = tx.db
            result = await db.execute(
                update(Statement).where(Statement.id == statement.id, Statement.status == "awaiting_signature",
                                        Statement.version == statement.version)
                .values(status="draft", updated_at=self.clock())
                .execution_options(synchronize_session=False))
            if cast(CursorResult[Any], result).rowcount != 1:
                raise conflict("not_awaiting_signature", "This statement is not waiting for your signature.")
            statement = await self._fresh(db, statement)
            self._event(db, statement, "change_requested", "victim", text)
            tx.add(who, "statement.change_request", f"statement:{statement.id}",
                   consultation_id=statement.consultation_id, details={"version": statement.version})
        return statement

    # -- signing ---------------------------------------------------------------------

    async def sign(self, consultation: Consultation, statement: Statement, image: SignatureImage,
                   typed_name: str, shown: Optional[str], actor: Actor, user_agent: Optional[str]
                   ) -> StatementSignature:
        """Seal the statement the witness was shown: 409 unless it waits for a signature
        at the version shown."""
        assert statement.sent_by is not None
        version, rendered = await self.current(consultation, statement, statement.sent_by)
        if shown is not None and shown != rendered.preview_sha256:
            raise conflict("statement_changed", "The statement changed since you opened it: read it again.")
        async with self.db() as db:
            result = await db.execute(
                update(Statement).where(Statement.id == statement.id, Statement.status == "awaiting_signature",
                                        Statement.version == statement.version)
                .values(status="sealing").execution_options(synchronize_session=False))
            await db.commit()
        if result.rowcount != 1:
            raise conflict("not_awaiting_signature", "This statement is not waiting for a signature.")
        try:
            return await self._seal(consultation, statement, version, rendered, image, typed_name, actor,
                                    user_agent)
        except BaseException:
            async with self.db() as db:
                await db.execute(update(Statement).where(Statement.id == statement.id, Statement.status == "sealing")
                                 .values(status="awaiting_signature").execution_options(synchronize_session=False))
                await db.commit()
            raise

    async def _seal(self, consultation: Consultation, statement: Statement, version: StatementVersion,
                    rendered: Rendered, image: SignatureImage, typed_name: str, actor: Actor,
                    user_agent: Optional[str]) -> StatementSignature:
        now = self.clock()
        signed = Signed(image.cropped, image.width, image.height, typed_name, now)
        doc, layout = rendered.doc, rendered.layout
        pdf = await asyncio.to_thread(render, doc, layout, now, signed,
                                  self.settings.statement_timezone or self.settings.timezone)
        reader = (version.content.get("read_to_witness") or {}).get("name")
        sealed = await seal(
            pdf, self.identity,
            reason=f"MG11 witness statement {statement.id} (version {version.version}) signed by the witness",
            location="EVR video response", name=typed_name)
        digest = hashlib.sha256(sealed).hexdigest()
        base = prefix(consultation.id, statement.id)
        # The store never overwrites: an attempt that failed (a crash, or its database
        # transaction refused) left its files; this one adds its own beside them, its PDF
        # too, and its record names which PDF is its own.
        existing = set(await self.store.keys(base))
        suffix, attempt = "", 1
        while any(f"{base}{name}" in existing for name in _attempt_names(suffix)):
            attempt += 1
            suffix = f"-{attempt}"
        png_name, record_name, pdf_name = _attempt_names(suffix)
        record = {
            "type": "evr.statement_signing_record", "version": 1,
            "statement_id": statement.id, "statement_version": version.version,
            "consultation_id": consultation.id, "cad_ref": consultation.cad_ref,
            "document_sha256": digest, "document_size": len(sealed), "document_name": pdf_name,
            "shown_sha256": rendered.preview_sha256, "content_sha256": version.content_sha256,
            "pages": layout.statement_pages, "declaration": layout.declaration,
            "declaration_accepted": True, "typed_name": typed_name,
            "signature_png_sha256": image.sha256, "signed_at": rfc3339(now),
            "link_binding_sha256": consultation.binding_hash, "client_ip": actor.client,
            "user_agent": user_agent, "officer": statement.sent_by,
            "identification": statement.identification, "read_to_witness_by": reader,
            "sealed_by": self.identity.subject,
        }
        # The PDF goes last: once it is there, this attempt's sealing can be finished.
        await self.store.add_bytes(base + png_name, image.original, sha256=image.sha256)
        raw_record = json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False).encode()
        await self.store.add_bytes(base + record_name, raw_record)
        await self.store.add_bytes(base + pdf_name, sealed, sha256=digest)
        row = await self._signed(consultation.id, statement, record, len(sealed), actor)
        log.info("statement sealed (id=%s consultation=%s pages=%d sha256=%s)", statement.id, consultation.id,
                 layout.statement_pages, digest)
        return row

    async def _signed(self, consultation_id: str, statement: Statement, record: dict[str, Any], size: int,
                      signer: Actor, recovered: bool = False) -> StatementSignature:
        """Record a sealed statement (its files are in the store): the signature, the
        evidence item, the status and both audit entries (the witness's signature and
        the seal) in one transaction, or nothing."""
        now = datetime.fromisoformat(record["signed_at"].replace("Z", "+00:00"))
        digest = record["document_sha256"]
        row = StatementSignature(
            statement_id=statement.id, version=record["statement_version"], document_sha256=digest,
            shown_sha256=record["shown_sha256"], signature_sha256=record["signature_png_sha256"], signed_at=now,
            typed_name=record["typed_name"], pages=record["pages"], declaration=record["declaration"],
            binding_hash=record["link_binding_sha256"] or "", client_ip=record["client_ip"],
            user_agent=record["user_agent"], officer=record["officer"] or "",
            identification=record["identification"] or "", read_by=record["read_to_witness_by"], record=record)
        obj = f"statement:{statement.id}"
        async with self.audit.transaction() as tx:
            db = tx.db
            result = await db.execute(update(Statement).where(Statement.id == statement.id,
                                                              Statement.status == "sealing")
                                      .values(status="signed", sha256=digest, signed_at=now, updated_at=now)
                                      .execution_options(synchronize_session=False))
            # Only the attempt that claimed it (status "sealing") finishes it.
            if cast(CursorResult[Any], result).rowcount != 1:
                raise conflict("not_awaiting_signature", "This statement is not being signed.")
            db.add(row)
            db.add(EvidenceItem(id=statement.id, kind="statement", consultation_id=consultation_id,
                                prefix=prefix(consultation_id, statement.id), created_at=now, sha256=digest,
                                size=size))
            db.add(StatementEvent(statement_id=statement.id, at=now, kind="signed",
                                  version=record["statement_version"], actor="victim"))
            tx.add(signer, "statement.sign", obj, consultation_id=consultation_id,
                   details={"version": record["statement_version"], "shown_sha256": record["shown_sha256"],
                            "signature_png_sha256": record["signature_png_sha256"],
                            **({"recovered": True} if recovered else {})})
            tx.add(Actor.system(), "statement.seal", obj, consultation_id=consultation_id,
                   details={"sha256": digest, "pages": record["pages"], "sealed_by": record["sealed_by"],
                            **({"recovered": True} if recovered else {})})
        statement.status, statement.sha256, statement.signed_at = "signed", digest, now
        return row

    async def recover(self) -> int:
        """After an unclean stop, a statement left ``sealing`` is finished from what an
        attempt stored when its PDF got there; otherwise it waits for its signature again."""
        async with self.db() as db:
            stuck = list(await db.scalars(select(Statement).where(Statement.status == "sealing")))
        for statement in stuck:
            found = await self._stored_attempt(statement)
            if found is not None:
                record, size = found
                signer = Actor("victim", "victim", record.get("client_ip"))
                await self._signed(statement.consultation_id, statement, record, size, signer, recovered=True)
                log.warning("statement %s: sealing interrupted after the PDF was stored; finished", statement.id)
                continue
            async with self.db() as db:
                await db.execute(update(Statement).where(Statement.id == statement.id, Statement.status == "sealing")
                                 .values(status="awaiting_signature").execution_options(synchronize_session=False))
                await db.commit()
        return len(stuck)

    async def _stored_attempt(self, statement: Statement) -> Optional[tuple[dict[str, Any], int]]:
        """The newest attempt whose record and PDF are both in the store (and agree) for
        the version waiting to be signed: (its record, the PDF's size), or None."""
        base = prefix(statement.consultation_id, statement.id)
        keys = set(await self.store.keys(base))
        attempts: list[tuple[int, str]] = []
        for key in keys:
            name = key[len(base):]
            if name == "signing-record.json":
                attempts.append((1, key))
            elif name.startswith("signing-record-") and name.endswith(".json"):
                number = name[len("signing-record-"):-len(".json")]
                if number.isascii() and number.isdigit():
                    attempts.append((int(number), key))
        for _, key in sorted(attempts, reverse=True):  # the newest that holds together wins
            try:
                record = json.loads(await self.store.read_bytes(key))
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            pdf_key = base + str(record.get("document_name") or PDF_NAME)
            if record.get("statement_version") != statement.version or pdf_key not in keys:
                continue
            sealed = await self.store.read_bytes(pdf_key)
            if hashlib.sha256(sealed).hexdigest() == record.get("document_sha256"):
                return record, len(sealed)
        return None

    async def pdf(self, consultation: Consultation, statement: Statement) -> bytes:
        """The sealed PDF: the one the signing record in the database names."""
        async with self.db() as db:
            signature = await db.get(StatementSignature, statement.id)
        name = (signature.record or {}).get("document_name") if signature else None
        return await self.store.read_bytes(prefix(consultation.id, statement.id) + (name or PDF_NAME))

    # -- disclosure -------------------------------------------------------------------

    async def disclosure(self, consultation: Consultation, statement: Statement) -> bytes:
        """The sealed statement's disclosure copy, as a signed PDF (see :meth:`disclosure_copy`)."""
        return (await self.disclosure_copy(consultation, statement)).pdf

    async def disclosure_copy(self, consultation: Consultation, statement: Statement) -> DisclosureCopy:
        """The sealed statement's pages without the rear page, for the prosecutor and the
        defence: the MG11's rear page (the witness's contact details and needs) is never
        disclosed. Drawn from the sealed version's stored content, the witness's stored
        signature image and the signing record, exactly as the original's statement pages
        (same layout, same page numbers, the signature on every page), each page marked as
        a disclosure copy naming the original's SHA-256, and signed (PAdES) by the
        service's certificate like the original, so ``evr statement verify`` checks it.

        Read-only: the original's stored files, hash and records are untouched, and
        the copy is not stored (it is made again on each request). 404 for an unknown
        statement, 409 ``not_signed`` unless sealed, 410 ``disposed`` once its content is
        disposed of, 409 ``original_mismatch`` when what is stored is not what was sealed
        (no copy is made of something that is not the original)."""
        async with self.db() as db:
            fresh = await db.get(Statement, statement.id)
            if fresh is None or fresh.consultation_id != consultation.id:
                raise not_found("No such statement.")
            signature = await db.get(StatementSignature, statement.id)
            if fresh.status != "signed" or signature is None:
                raise conflict("not_signed", "This statement has not been signed yet: only a sealed statement has "
                                             "a disclosure copy.")
            version = await self.version(db, fresh, signature.version)
        record = signature.record or {}
        base = prefix(consultation.id, statement.id)
        pdf_name = str(record.get("document_name") or PDF_NAME)
        suffix = pdf_name[len("statement"):-len(".pdf")] if pdf_name.startswith("statement") else ""
        png_name = _attempt_names(suffix)[0]
        try:
            original = await self.store.read_bytes(base + pdf_name)
            png = await self.store.read_bytes(base + png_name)
        except ItemMissing:
            raise ApiError(410, "disposed", "This statement's content was disposed of: there is nothing left to "
                                            "disclose.") from None
        except IntegrityError as exc:
            log.error("statement %s: the stored original cannot be read: %s", statement.id, exc)
            raise _mismatch() from None
        original_sha256 = hashlib.sha256(original).hexdigest()
        png_sha256 = hashlib.sha256(png).hexdigest()
        if original_sha256 != signature.document_sha256 or png_sha256 != signature.signature_sha256:
            log.error("statement %s: the stored original or signature image differs from the signing record",
                      statement.id)
            raise _mismatch()
        rendered = await self.rendered(consultation, fresh, version, signature.officer or fresh.sent_by or "")
        if (rendered.layout.statement_pages, rendered.layout.declaration) != (signature.pages, signature.declaration):
            # Another release's layout: a copy would not show the pages the witness signed.
            log.error("statement %s: laid out again, its pages differ from the sealed ones", statement.id)
            raise _mismatch()
        try:
            image = await asyncio.to_thread(signature_image, png)
        except ApiError:
            raise _mismatch() from None
        signed = Signed(image.cropped, image.width, image.height, signature.typed_name, signature.signed_at)
        mark = Disclosure(original_sha256)
        pdf = await asyncio.to_thread(render, rendered.doc, rendered.layout, signature.signed_at, signed,
                                      self.settings.statement_timezone or self.settings.timezone, mark)
        copy = await seal(
            pdf, self.identity,
            reason=f"Disclosure copy of MG11 witness statement {statement.id} (version {version.version}), its rear "
                   f"page (the witness's personal details) withheld; original SHA-256 {original_sha256}",
            location="EVR video response", name=self.identity.subject)
        return DisclosureCopy(statement.id, version.version, copy, hashlib.sha256(copy).hexdigest(),
                              original_sha256, signature.pages)


def _mismatch() -> ApiError:
    return conflict("original_mismatch", "The stored statement is not the one that was sealed: no disclosure copy "
                                         "can be made of it. The evidence store needs checking.")


def _is_uuid(value: str) -> bool:
    """Whether ``value`` is an id as the service writes them (anything else, NUL
    included, is never looked up: PostgreSQL refuses NUL in a query)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _attempt_names(suffix: str) -> tuple[str, str, str]:
    """The signature image, signing record and sealed PDF of one signing attempt
    (the first has no suffix: ``statement.pdf``)."""
    return f"signature{suffix}.png", f"signing-record{suffix}.json", f"statement{suffix}.pdf"

