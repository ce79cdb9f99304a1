"""A disclosure bundle for the prosecutor: the chosen items, a signed schedule, how to verify.

``POST /api/consultations/{id}/disclosure`` ``{"reason", "items": [id, ...]}`` gives a
zip holding, for each item, what may be disclosed of it:

- a recording: its newest redacted copy where one exists (else the original), as a
  whole package (segments, signed manifest and, for a copy, its original's signed
  manifest), under ``recordings/<id>/``;
- a statement: its disclosure copy (the MG11 without its rear page, signed, naming the
  sealed original's SHA-256; :meth:`evr.statements.service.Statements.disclosure_copy`),
  under ``statements/<id>/``;
- an upload: the file as received, under ``uploads/<id>/``;
- the chat transcript: its signed package, under ``chat/<id>/``.

Beside them: ``schedule.json`` (each item, its description, its files with their
SHA-256, whether it is redacted and the SHA-256 of what it was made from), signed with
the service's Ed25519 key (``schedule.sig``), the same as ``SCHEDULE.csv`` for people,
``public_key.pem`` and ``HOW-TO-VERIFY.txt``. ``evr disclosure verify BUNDLE.zip``
checks the schedule's signature, every file's hash, that nothing else is in the zip,
and each recording's and transcript's own signed manifest and chain.

Nothing is disclosed without a reason: the bundle is audit-logged (``disclosure.export``)
with the reason and every item and hash, before a byte leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import json
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select

from . import transcripts
from .auth import Staff
from .db import Consultation, EvidenceItem, Recording, Statement, Upload
from .errors import ApiError, checked_reason
from .evidence import ItemMissing
from .http import (
    AUDIT,
    CLOCK,
    DB,
    SETTINGS,
    SIGNING_KEY,
    STATEMENTS,
    STORE,
    actor,
    current_staff,
    read_json,
)
from .keys import fingerprint, public_pem
from .recording.api import evidence_consultation
from .timeutil import rfc3339

FORMAT = "evr-disclosure/1"
SCHEDULE = "schedule.json"
SIGNATURE = "schedule.sig"
SCHEDULE_CSV = "SCHEDULE.csv"
PUBLIC_KEY = "public_key.pem"
README = "HOW-TO-VERIFY.txt"
BUNDLE_FILES = {SCHEDULE, SIGNATURE, SCHEDULE_CSV, PUBLIC_KEY, README}
#: Items in one bundle at most (a consultation holds far fewer).
MAX_ITEMS = 500


@dataclass
class Entry:
    """One item of the bundle, as the schedule lists it."""

    item: str
    kind: str
    description: str
    folder: str
    redacted: bool
    sha256: str  #: the item's defining hash: a manifest's, the PDF's, the file's
    source: Optional[dict[str, str]] = None  #: what a redacted item was made from: {"id", "sha256"}
    files: list[dict[str, Any]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {"item": self.item, "kind": self.kind, "description": self.description, "folder": self.folder,
                "redacted": self.redacted, "sha256": self.sha256, "source": self.source, "files": self.files}


class Bundle:
    """The zip being written: each file added is hashed for the schedule."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive

    def add(self, entry: Entry, name: str, data: bytes, media: bool = False) -> None:
        path = f"{entry.folder}{name}"
        self.archive.writestr(path, data, compress_type=zipfile.ZIP_STORED if media else zipfile.ZIP_DEFLATED)
        entry.files.append({"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})


def setup(app: web.Application) -> None:
    app.add_routes([web.post("/api/consultations/{id}/disclosure", disclose)])


def _item_ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ApiError(422, "items_required", "Name the items to disclose: a list of ids.", fields=["items"])
    if len(value) > MAX_ITEMS:
        raise ApiError(422, "too_many_items", f"At most {MAX_ITEMS} items in one bundle.", fields=["items"])
    ids: list[str] = []
    for item in value:
        try:
            checked = str(uuid.UUID(item)) if isinstance(item, str) else None
        except ValueError:
            checked = None
        if checked is None:
            raise ApiError(422, "unknown_item", f"{str(item)[:64]!r} is not an item id.", fields=["items"])
        if checked not in ids:
            ids.append(checked)
    return ids


async def disclose(request: web.Request) -> web.StreamResponse:
    staff = current_staff(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "Send a JSON object: reason and items.")
    consultation = await evidence_consultation(request, staff)
    reason = checked_reason(body.get("reason"))
    ids = _item_ids(body.get("items"))
    async with request.app[DB]() as db:
        items = {i.id: i for i in await db.scalars(select(EvidenceItem).where(
            EvidenceItem.id.in_(ids), EvidenceItem.consultation_id == consultation.id))}
    missing = [i for i in ids if i not in items]
    if missing:
        raise ApiError(422, "unknown_item", f"{missing[0]} is not an item of this consultation (recordings, "
                                            "statements, uploads and the chat transcript are).", fields=["items"])
    settings = request.app[SETTINGS]
    with tempfile.TemporaryFile(dir=settings.data_dir) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            try:
                entries = await _write_items(request, consultation, [items[i] for i in ids], Bundle(archive))
            except ItemMissing:
                raise ApiError(410, "disposed", "An item's content was disposed of under the retention rules: "
                                                "leave it out of the bundle.") from None
            made_at = request.app[CLOCK]()
            schedule = _schedule(consultation, entries, staff, reason, made_at, request.app[SIGNING_KEY])
            archive.writestr(SCHEDULE, schedule)
            archive.writestr(SIGNATURE, request.app[SIGNING_KEY].sign(schedule))
            archive.writestr(SCHEDULE_CSV, _csv(entries))
            archive.writestr(PUBLIC_KEY, public_pem(request.app[SIGNING_KEY].public_key()))
            archive.writestr(README, HOW_TO_VERIFY.format(
                consultation=consultation.id, cad_ref=consultation.cad_ref, made_at=rfc3339(made_at),
                by=f"{staff.username} ({staff.role})", reason=reason,
                fingerprint=fingerprint(request.app[SIGNING_KEY].public_key())))
        size = tmp.tell()
        await request.app[AUDIT].record(
            actor(request, staff), "disclosure.export", f"consultation:{consultation.id}",
            consultation_id=consultation.id, reason=reason,
            details={"schedule_sha256": hashlib.sha256(schedule).hexdigest(),
                     "items": [{"item": e.item, "kind": e.kind, "sha256": e.sha256, "redacted": e.redacted,
                                "source": e.source} for e in entries]})
        tmp.seek(0)
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip", "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="disclosure-{consultation.id}.zip"'})
        await response.prepare(request)
        while chunk := await asyncio.to_thread(tmp.read, 1 << 20):
            await response.write(chunk)
        await response.write_eof()
    return response


async def _write_items(request: web.Request, consultation: Consultation, items: list[EvidenceItem],
                       bundle: Bundle) -> list[Entry]:
    entries = []
    for item in items:
        if item.kind == "recording":
            entries.append(await _recording(request, item, bundle))
        elif item.kind == "statement":
            entries.append(await _statement(request, consultation, item, bundle))
        elif item.kind == "upload":
            entries.append(await _upload(request, item, bundle))
        elif item.kind == "chat":
            entries.append(await _chat(request, consultation, item, bundle))
        else:  # pragma: no cover - every kind the service makes is above
            raise ApiError(422, "unknown_item", f"{item.id} is not an item that can be disclosed.", fields=["items"])
    return entries


async def _package(request: web.Request, base: str, entry: Entry, bundle: Bundle,
                   skip: Callable[[str], bool] = lambda name: False) -> None:
    store = request.app[STORE]
    for key in sorted(await store.keys(base)):
        name = key[len(base):]
        if not skip(name):
            bundle.add(entry, name, await store.read_bytes(key), media=name.endswith(".webm"))


async def _recording(request: web.Request, item: EvidenceItem, bundle: Bundle) -> Entry:
    from evr.recording.redactions import copies_of
    from evr.recording.verify import DERIVED

    async with request.app[DB]() as db:
        recording = await db.get(Recording, item.id)
        assert recording is not None
        copies = await copies_of(db, recording.id) if recording.kind == "original" else []
    chosen = copies[0] if copies else recording
    if chosen.manifest_sha256 is None:
        raise ApiError(409, "recording_in_progress", f"Recording {recording.id} is still running: disclose it "
                                                     "after the call.")
    who = chosen.participant_name or chosen.participant_user or chosen.participant
    what = "shared screen" if chosen.track == "screen" else "camera and microphone"
    description = (f"Recording of the {chosen.participant}'s {what} ({who}), {rfc3339(chosen.started_at)} to "
                   f"{rfc3339(chosen.ended_at)}")
    source = None
    if chosen.kind == "redacted":
        ops = (chosen.redaction or {}).get("operations") or {}
        description += (f"; redacted copy: {len(ops.get('mute') or [])} range(s) muted, "
                        f"{len(ops.get('blur') or [])} box(es) blurred or masked"
                        f"{', faces blurred' if ops.get('blur_faces') else ''}")
        source = {"id": str(chosen.source_recording_id), "sha256": str(chosen.source_manifest_sha256)}
    entry = Entry(recording.id, "recording", description, f"recordings/{chosen.id}/", chosen.kind == "redacted",
                  chosen.manifest_sha256, source)
    base = f"recordings/{chosen.consultation_id}/{chosen.id}/"
    await _package(request, base, entry, bundle, skip=lambda name: name.startswith(DERIVED))
    if not entry.files:
        raise ItemMissing(base)
    return entry


async def _statement(request: web.Request, consultation: Consultation, item: EvidenceItem, bundle: Bundle) -> Entry:
    async with request.app[DB]() as db:
        statement = await db.get(Statement, item.id)
        assert statement is not None
    copy = await request.app[STATEMENTS].disclosure_copy(consultation, statement)
    entry = Entry(statement.id, "statement",
                  f"MG11 witness statement (version {copy.version}, {copy.pages} page(s)), signed "
                  f"{rfc3339(statement.signed_at)}; disclosure copy: the rear page (the witness's personal "
                  "details) withheld", f"statements/{statement.id}/", True, copy.sha256,
                  {"id": statement.id, "sha256": copy.original_sha256})
    bundle.add(entry, "disclosure.pdf", copy.pdf)
    return entry


async def _upload(request: web.Request, item: EvidenceItem, bundle: Bundle) -> Entry:
    from evr.uploads.service import original_key

    async with request.app[DB]() as db:
        upload = await db.get(Upload, item.id)
        assert upload is not None
    if upload.status != "complete" or upload.sha256 is None:
        raise ApiError(409, "upload_not_complete", f"Upload {upload.id} is not a complete, kept file "
                                                   f"({upload.status}): it cannot be disclosed.")
    exhibit = f"exhibit {upload.exhibit_ref}: " if upload.exhibit_ref else ""
    entry = Entry(upload.id, "upload", f"Uploaded {exhibit}{upload.filename} ({upload.content_type or 'unknown type'}"
                  f", {upload.length} bytes), by the {upload.uploader_role}, {rfc3339(upload.created_at)}",
                  f"uploads/{upload.id}/", False, upload.sha256)
    data = await request.app[STORE].read_bytes(original_key(upload))
    if hashlib.sha256(data).hexdigest() != upload.sha256:
        raise ApiError(409, "item_changed", f"Upload {upload.id} does not match its recorded SHA-256: it was not "
                                            "disclosed. The evidence store needs checking.")
    bundle.add(entry, _safe_name(upload.filename), data, media=True)
    return entry


async def _chat(request: web.Request, consultation: Consultation, item: EvidenceItem, bundle: Bundle) -> Entry:
    entry = Entry(item.id, "chat", "Chat transcript of the call (every message, in order, hash-chained)",
                  f"chat/{item.id}/", False, str(item.sha256))
    await _package(request, transcripts.prefix(consultation.id), entry, bundle)
    return entry


def _safe_name(name: str) -> str:
    """A file name for inside the zip: no folders, nothing hidden, never empty."""
    cleaned = "".join(c if c.isalnum() or c in "._- " else "_" for c in name.replace("/", "_").replace("\\", "_"))
    cleaned = cleaned.strip(" .")[:150]
    return cleaned or "file"


def _schedule(consultation: Consultation, entries: list[Entry], staff: Staff, reason: str, made_at: Any,
              key: Ed25519PrivateKey) -> bytes:
    document = {
        "format": FORMAT,
        "consultation": {"id": consultation.id, "cad_ref": consultation.cad_ref},
        "made_at": rfc3339(made_at),
        "made_by": {"user": staff.username, "role": staff.role},
        "reason": reason,
        "items": [e.json() for e in entries],
        "signing_key": {"algorithm": "Ed25519", "sha256": fingerprint(key.public_key())},
    }
    return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


def _csv(entries: Iterable[Entry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["item", "kind", "description", "folder", "sha256", "redacted", "source_sha256"])
    for e in entries:
        writer.writerow([e.item, e.kind, _cell(e.description), e.folder, e.sha256, "yes" if e.redacted else "no",
                         (e.source or {}).get("sha256", "")])
    return out.getvalue()


def _cell(value: str) -> str:
    """No spreadsheet formula from a description (a file name is the uploader's)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# -- verification -----------------------------------------------------------------------


class Problem(Exception):
    """The first thing found wrong with a bundle."""


@dataclass
class Report:
    items: int
    redacted: int
    key_sha256: str
    lines: list[str]


async def verify_bundle(path: Path, trusted: Optional[Ed25519PublicKey] = None) -> Report:
    """Check a bundle; :class:`Problem` names the first failure."""
    from evr.recording.manifest import Problem as PackageProblem
    from evr.recording.verify import ZipPackage, check_signed, choose_key, verify

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Problem(f"{path.name}: not a readable zip ({exc})") from None
    with archive:
        names = {n for n in archive.namelist() if not n.endswith("/")}
        for required in (SCHEDULE, SIGNATURE):
            if required not in names:
                raise Problem(f"{required} is missing")
        body, signature = archive.read(SCHEDULE), archive.read(SIGNATURE)
        try:
            key = choose_key(archive.read(PUBLIC_KEY) if PUBLIC_KEY in names else None, trusted)
        except PackageProblem as exc:
            raise Problem(str(exc)) from None
        try:
            key.verify(signature, body)
        except Exception:  # noqa: BLE001 - InvalidSignature
            raise Problem(f"{SCHEDULE}: the signature does not match (the schedule was changed or signed by "
                          "another key)") from None
        try:
            schedule = json.loads(body)
            items = schedule["items"]
            assert schedule.get("format") == FORMAT and isinstance(items, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise Problem(f"{SCHEDULE}: not an {FORMAT} schedule") from None
        listed: set[str] = set()
        lines = []
        for item in items:
            for f in item.get("files", []):
                name = f.get("path")
                if name not in names:
                    raise Problem(f"{name}: listed in the schedule (item {item.get('item')}) but missing")
                if hashlib.sha256(archive.read(name)).hexdigest() != f.get("sha256"):
                    raise Problem(f"{name} does not match its SHA-256 in the schedule (changed or swapped)")
                listed.add(name)
            package = ZipPackage(path, within=str(item.get("folder")), archive=archive)
            try:
                if item.get("kind") == "recording":
                    report = await verify(package, key)
                    if item.get("redacted") and (report.source is None
                                                 or report.source.manifest_sha256 != item["source"]["sha256"]):
                        raise Problem(f"item {item.get('item')}: the copy's provenance is not the schedule's")
                elif item.get("kind") == "chat":
                    await check_signed(package, transcripts.CHAT, key)
            except PackageProblem as exc:
                raise Problem(f"item {item.get('item')} ({item.get('folder')}): {exc}") from None
            lines.append(f"OK: {item.get('kind')} {item.get('item')}"
                         f"{' (redacted)' if item.get('redacted') else ''}: {item.get('description')}")
        extra = sorted(names - listed - BUNDLE_FILES)
        if extra:
            raise Problem(f"{extra[0]} is not listed in the schedule")
        return Report(len(items), sum(1 for i in items if i.get("redacted")), fingerprint(key), lines)


def register(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from evr.recording.cli import add_target, verify_parser

    check = verify_parser(
        commands, common, "disclosure", "disclosure bundles", "check a disclosure bundle",
        "Check a disclosure bundle (.zip): the schedule's signature, every file's SHA-256, that nothing "
        "unlisted is in it, and every recording's and chat transcript's own signed manifest. Exit 0 when "
        "intact, 1 naming the first failure.")
    add_target(check, "BUNDLE.zip", "the disclosure bundle", "the public key you trust (default: the one shipped)")
    check.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from evr.recording.cli import outcome, trusted_key

    async def run() -> list[str]:
        from evr.recording.manifest import Problem as KeyProblem

        try:
            key = trusted_key(args.key)
        except KeyProblem as exc:
            raise Problem(str(exc)) from None
        report = await verify_bundle(Path(args.target), key)
        return [*report.lines, f"OK: disclosure bundle intact: {report.items} item(s), {report.redacted} redacted; "
                               f"schedule signed by Ed25519 key {report.key_sha256}"]

    return outcome(run(), Problem)


HOW_TO_VERIFY = """\
EVR disclosure bundle
=====================

Consultation {consultation} (CAD {cad_ref}).
Made {made_at} by {by} for: {reason}

What is here
- SCHEDULE.csv: every item disclosed: what it is, its folder, its SHA-256,
  whether it is redacted and the SHA-256 of what it was made from.
- schedule.json: the same, with every file's SHA-256 and size; schedule.sig
  is the Ed25519 signature of its exact bytes; public_key.pem is the key. Its
  SHA-256 fingerprint is {fingerprint}: compare it with the fingerprint your
  police force publishes before trusting it.
- recordings/<id>/: a recording as captured, or its redacted copy (faces or
  boxes blurred, ranges muted) where one was made: WebM segments, the signed
  manifest and, for a copy, the original's signed manifest it names.
- statements/<id>/disclosure.pdf: the MG11 statement without its rear page
  (the witness's personal details are not disclosed), signed by the force's
  certificate and naming the SHA-256 of the sealed original.
- uploads/<id>/: files the victim or officer uploaded, exactly as received.
- chat/<id>/: the call's chat transcript, signed and hash-chained.

How to verify
1. With EVR installed:  evr disclosure verify THIS-BUNDLE.zip
   (exit status 0 = intact; otherwise the first failure is named). It checks
   the schedule's signature, every file's SHA-256, that nothing unlisted is in
   the bundle, and each recording's and transcript's own signed manifest.
2. Each recording folder is also a recording package on its own:
   evr recording verify checks it and, for a redacted copy, its provenance.
3. A statement's PDF carries its own signature: evr statement verify, or any
   PDF reader that shows signatures (the force's certificate signs it).
4. By hand: check schedule.sig against schedule.json with public_key.pem
   (openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin
   -in schedule.json -sigfile schedule.sig), then sha256sum every file and
   compare it with schedule.json.
"""
