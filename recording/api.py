"""Recordings over HTTP: list, play back, export (with a reason), classify.

Every view, download and export is audit-logged with who, when and (where given) why.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, Optional

from aiohttp import web
from sqlalchemy import select

from evr.auth import Staff
from evr.db import Consultation, Recording
from evr.errors import ApiError, checked_reason, not_found
from evr.evidence import ItemExists
from evr.http import (
    AUDIT,
    CONSULTATIONS,
    DB,
    RECORDINGS,
    REDACTIONS,
    SIGNING_KEY,
    STORE,
    actor,
    current_staff,
    read_json,
)
from evr.keys import fingerprint, public_pem
from evr.roles import CALL_ROLES, EVIDENCE_ROLES
from evr.timeutil import rfc3339

from . import manifest as mf
from . import operations
from .playback import remux
from .redactions import duration_of, job_json
from .service import entries_of, prefix
from .verify import DERIVED, HOW_TO_VERIFY, REDACTED_NOTE

log = logging.getLogger(__name__)

CLASSIFICATIONS = ("non_evidential", "evidential")


def setup(app: web.Application) -> None:
    base = "/api/consultations/{id}/recordings"
    app.add_routes([
        web.get(base, list_recordings),
        web.get(base + "/{rid}", get_recording),
        web.get(base + "/{rid}/playback", playback),
        web.get(base + "/{rid}/export", export),
        web.post(base + "/{rid}/classification", classify),
        web.post(base + "/{rid}/redactions", request_redaction),
        web.get(base + "/{rid}/redactions", list_redactions),
        web.get(base + "/{rid}/redactions/{xid}", get_redaction),
        web.post(base + "/{rid}/redactions/{xid}/cancel", cancel_redaction),
    ])


def recording_json(r: Recording) -> dict[str, Any]:
    return {
        "id": r.id,
        "participant": r.participant,
        "participant_user": r.participant_user,
        "participant_name": r.participant_name,
        "track": r.track,
        "started_at": rfc3339(r.started_at),
        "ended_at": rfc3339(r.ended_at),
        "duration_s": round(r.duration_s, 3),
        "segments": r.segments,
        "manifest_sha256": r.manifest_sha256,
        "status": r.status,
        "classification": r.classification,
        "kind": r.kind,
        "source_recording": r.source_recording_id,
        "source_manifest_sha256": r.source_manifest_sha256,
        "redaction": r.redaction["operations"] if r.redaction else None,
    }


async def evidence_consultation(request: web.Request, staff: Staff) -> Consultation:
    """The consultation, if this member of staff may see it. Records staff see every
    consultation's recordings (they manage retention), but open content only with a reason.
    No one else: admin manages users, not evidence."""
    staff.require(*EVIDENCE_ROLES)
    cid = request.match_info["id"]
    async with request.app[DB]() as db:
        if staff.role == "records":
            try:
                uuid.UUID(cid)
            except ValueError:
                raise not_found("No such consultation.") from None
            found = await db.get(Consultation, cid)
            if found is None:
                raise not_found("No such consultation.")
            return found
        return await request.app[CONSULTATIONS].get(db, staff, cid)


async def _recording(request: web.Request, staff: Staff) -> tuple[Consultation, Recording]:
    consultation = await evidence_consultation(request, staff)
    try:
        uuid.UUID(request.match_info["rid"])
    except ValueError:  # never sent to the database (PostgreSQL refuses a NUL, say)
        raise not_found("No such recording.") from None
    async with request.app[DB]() as db:
        recording = await db.scalar(select(Recording).where(
            Recording.id == request.match_info["rid"], Recording.consultation_id == consultation.id))
    if recording is None:
        raise not_found("No such recording.")
    return consultation, recording


def _reason(request: web.Request, required: bool) -> Optional[str]:
    return checked_reason(request.query.get("reason"), required=required)


async def list_recordings(request: web.Request) -> web.Response:
    staff = current_staff(request)
    consultation = await evidence_consultation(request, staff)
    async with request.app[DB]() as db:
        rows = await db.scalars(select(Recording).where(Recording.consultation_id == consultation.id)
                                .order_by(Recording.started_at, Recording.id))
        recordings = [recording_json(r) for r in rows]
    return web.json_response({"recordings": recordings})


async def get_recording(request: web.Request) -> web.Response:
    staff = current_staff(request)
    _, recording = await _recording(request, staff)
    async with request.app[DB]() as db:
        entries = await entries_of(db, recording.id)
    return web.json_response({**recording_json(recording), "entries": entries})


async def playback(request: web.Request) -> web.StreamResponse:
    """One WebM file of the recording's segments joined by remux. The joined copy is a
    derivative kept, encrypted like everything else, in the evidence store under the
    recording's own prefix (so disposal takes it with the originals); Range requests
    are answered by decrypting from the start and skipping."""
    staff = current_staff(request)
    reason = _reason(request, required=staff.role == "records")
    consultation, recording = await _recording(request, staff)
    if recording.segments == 0:
        raise ApiError(409, "no_media", "This recording holds no media yet.")
    key, size = await _playback_copy(request, consultation.id, recording)
    try:
        wanted = request.http_range
    except ValueError:
        raise ApiError(416, "bad_range", "The Range header could not be read.") from None
    start = wanted.start or 0
    start = max(0, size + start) if start < 0 else start
    stop = size if wanted.stop is None else min(wanted.stop, size)
    if start >= stop and size:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    if start == 0:  # one entry per viewing, not per seek
        await request.app[AUDIT].record(actor(request, staff), "recording.view", f"recording:{recording.id}",
                                        consultation_id=consultation.id, reason=reason)
    partial = "Range" in request.headers
    response = web.StreamResponse(status=206 if partial else 200, headers={
        "Content-Type": "video/webm",
        "Content-Disposition": f'inline; filename="recording-{recording.id}.webm"',
        "Accept-Ranges": "bytes",
        "Content-Length": str(stop - start),
        **({"Content-Range": f"bytes {start}-{stop - 1}/{size}"} if partial else {}),
    })
    await response.prepare(request)
    offset = 0
    async for chunk in request.app[STORE].read(key):
        end = offset + len(chunk)
        if end > start and offset < stop:
            await response.write(chunk[max(0, start - offset):stop - offset])
        offset = end
        if offset >= stop:
            break
    await response.write_eof()
    return response


async def _playback_copy(request: web.Request, consultation_id: str, recording: Recording) -> tuple[str, int]:
    """The store key and size of the joined copy of the recording as it stands now
    (its name carries the head of the manifest chain and its size), made when missing."""
    store = request.app[STORE]
    base = prefix(consultation_id, recording.id)
    name = f"{base}{DERIVED}playback-{recording.head_hash[:16]}-"
    for key in await store.keys(base + DERIVED):
        if key.startswith(name):
            return key, int(key[len(name):].removesuffix(".webm"))
    segments = [k for k in await store.keys(base) if k[len(base):].startswith("seg-")]
    with tempfile.TemporaryDirectory(dir=request.app[RECORDINGS].settings.data_dir) as tmp:
        sources = []
        for key in segments:  # plaintext only for as long as the remux takes
            source = Path(tmp) / key[len(base):]
            await asyncio.to_thread(source.write_bytes, await store.read_bytes(key))
            sources.append(source)
        joined = Path(tmp) / "playback.webm"
        await asyncio.to_thread(remux, sources, joined)
        size = joined.stat().st_size
        key = f"{name}{size}.webm"
        try:
            await store.add_file(key, joined)
        except ItemExists:  # made by a concurrent request a moment ago
            pass
    return key, size


async def export(request: web.Request) -> web.StreamResponse:
    """A zip of the original segments, the signed manifest, the public key and a note
    on how to verify. Only for a finished recording; a reason is required."""
    staff = current_staff(request)
    reason = checked_reason(request.query.get("reason"))
    consultation, recording = await _recording(request, staff)
    if recording.manifest_sha256 is None:
        raise ApiError(409, "recording_in_progress", "The recording is still running; export it after the call.")
    store = request.app[STORE]
    key = request.app[SIGNING_KEY]
    base = prefix(consultation.id, recording.id)
    keys = [k for k in await store.keys(base) if not k[len(base):].startswith(DERIVED)]
    entry = await request.app[AUDIT].record(actor(request, staff), "recording.export", f"recording:{recording.id}",
                                            consultation_id=consultation.id, reason=reason,
                                            details={"manifest_sha256": recording.manifest_sha256})
    note = HOW_TO_VERIFY.format(
        id=recording.id, consultation=consultation.id, cad_ref=consultation.cad_ref,
        exported_at=rfc3339(entry.at), by=f"{staff.username} ({staff.role})", reason=reason,
        fingerprint=fingerprint(key.public_key()),
    )
    if recording.kind == "redacted":
        note += REDACTED_NOTE.format(source=recording.source_recording_id,
                                     source_sha256=recording.source_manifest_sha256)
    with tempfile.TemporaryFile() as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for k in keys:
                archive.writestr(k[len(base):], await store.read_bytes(k))
            archive.writestr(mf.PUBLIC_KEY, public_pem(key.public_key()))
            archive.writestr(mf.README, note)
        size = tmp.tell()
        tmp.seek(0)
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="recording-{recording.id}.zip"',
            "Content-Length": str(size),
        })
        await response.prepare(request)
        while chunk := await asyncio.to_thread(tmp.read, 1 << 20):
            await response.write(chunk)
        await response.write_eof()
    return response


async def classify(request: web.Request) -> web.Response:
    """Mark a recording evidential (or back): officers and sergeants, with a reason."""
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    body = await read_json(request)
    if not isinstance(body, dict) or body.get("classification") not in CLASSIFICATIONS:
        raise ApiError(422, "invalid", f"classification must be one of {', '.join(CLASSIFICATIONS)}.",
                       fields=["classification"])
    reason = checked_reason(body.get("reason"))
    consultation, recording = await _recording(request, staff)
    if recording.kind == "redacted":
        raise ApiError(409, "redacted_copy", "A redacted copy is classified with its original: classify the "
                                             "original recording.")
    async with request.app[AUDIT].transaction() as tx:  # the change and its entry, or neither
        row = await tx.db.get(Recording, recording.id)
        assert row is not None
        old, row.classification = row.classification, body["classification"]
        copies = list(await tx.db.scalars(select(Recording).where(Recording.source_recording_id == row.id)))
        for copy in copies:
            copy.classification = row.classification  # retention keeps a copy as long as its original
        tx.add(actor(request, staff), "recording.classify", f"recording:{row.id}", consultation_id=consultation.id,
               reason=reason, details={"from": old, "to": row.classification,
                                       **({"redacted_copies": sorted(c.id for c in copies)} if copies else {})})
        answer = recording_json(row)
    return web.json_response(answer)


# -- redaction ---------------------------------------------------------------------------

async def request_redaction(request: web.Request) -> web.Response:
    """Queue a redacted copy (202). Checked before anything is queued: the recording
    (404), a reason (422), a finished recording (409), every range within it and every
    box within the frame (422)."""
    staff = current_staff(request)
    staff.require(*EVIDENCE_ROLES)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "Send a JSON object: reason, mute, blur, blur_faces.")
    _, recording = await _recording(request, staff)
    reason = checked_reason(body.get("reason"))
    if recording.manifest_sha256 is None:
        raise ApiError(409, "recording_in_progress", "The recording is still running; redact it after the call.")
    async with request.app[DB]() as db:
        duration = await duration_of(db, recording)
    wanted = operations.parse(body, duration, has_video=True, has_audio=recording.track == "camera")
    job = await request.app[REDACTIONS].request(actor(request, staff), staff.id, recording, wanted, reason)
    return web.json_response(job_json(job), status=202)


async def list_redactions(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*EVIDENCE_ROLES)
    _, recording = await _recording(request, staff)
    jobs = await request.app[REDACTIONS].of_recording(recording.id)
    return web.json_response({"redactions": [job_json(j) for j in jobs]})


async def get_redaction(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*EVIDENCE_ROLES)
    _, recording = await _recording(request, staff)
    job = await request.app[REDACTIONS].get(recording.id, request.match_info["xid"])
    return web.json_response(job_json(job))


async def cancel_redaction(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*EVIDENCE_ROLES)
    _, recording = await _recording(request, staff)
    jobs = request.app[REDACTIONS]
    job = await jobs.cancel(actor(request, staff), await jobs.get(recording.id, request.match_info["xid"]))
    return web.json_response(job_json(job))
