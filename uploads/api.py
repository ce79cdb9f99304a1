"""HTTP: the tus 1.0 endpoints (core, creation, checksum, termination) for the victim
(``/j/{token}/uploads``) and staff (``/api/consultations/{id}/uploads``), and the
staff's list, item, content, preview and exhibit-reference views.

Bodies are read from ``request.content`` as they arrive, never whole. Content is only
ever served as an attachment, ``nosniff``, sandboxed; a quarantined file as
``application/octet-stream``. Collection, views and downloads are audit-logged.

Everything under ``/j/{token}/uploads`` answers JSON, errors included (an unknown
method or path, a fault), like ``/api/``: the victim's page reads these answers.
tus headers are numbers in ASCII digits (:func:`evr.text.parse_count`) and base64 of
UTF-8; anything else is a 400, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import urllib.parse
from typing import Any, Awaitable, Callable

from aiohttp import web
from sqlalchemy import select

from ..audit import Actor
from ..auth import Staff
from ..db import Consultation, Upload
from ..errors import ApiError, error_response
from ..evidence import IntegrityError
from ..http import (
    AUDIT,
    CONSULTATIONS,
    DB,
    SETTINGS,
    STORE,
    UPLOADS,
    actor,
    current_staff,
    read_json,
)
from ..links import victim_actor, victim_link
from ..roles import CALL_ROLES
from ..text import TextError, parse_count
from ..timeutil import rfc3339
from .service import (
    CHECKSUMS,
    GONE,
    ChecksumMismatch,
    Patch,
    Uploader,
    decode_metadata,
    original_key,
    preview_key,
)

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,checksum,termination"
OFFSET_TYPE = "application/offset+octet-stream"
EXHIBIT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9 /._-]{0,63}")
#: Upload ids are UUIDs; anything else is not found (and never reaches the database).
UPLOAD_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: A PATCH that sends nothing for this long is taken as a lost connection (a phone
#: out of coverage often just goes quiet): what arrived is kept, the client resumes.
IDLE_TIMEOUT = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(app: web.Application) -> None:
    victim = "/j/{token}/uploads"
    staff = "/api/consultations/{id}/uploads"
    app.add_routes([
        # Each path's routes in a row: the catch-all ("*", last) answers any other method.
        web.options(victim, tus_options),
        web.post(victim, tus(victim_create)),
        web.get(victim, json_only(victim_list), allow_head=False),
        web.route("*", victim, json_only(method_not_allowed)),
        web.head(victim + "/{uid}", tus(victim_head)),
        web.patch(victim + "/{uid}", tus(victim_patch)),
        web.delete(victim + "/{uid}", tus(victim_delete)),
        web.get(victim + "/{uid}", json_only(victim_receipt), allow_head=False),
        web.route("*", victim + "/{uid}", json_only(method_not_allowed)),
        web.route("*", victim + "/{uid}/{rest:.*}", json_only(no_such_path)),
        web.options(staff, tus_options),
        web.post(staff, tus(staff_create)),
        web.get(staff, staff_list, allow_head=False),
        web.head(staff + "/{uid}", tus(staff_head)),
        web.patch(staff + "/{uid}", staff_patch),
        web.delete(staff + "/{uid}", tus(staff_delete)),
        web.get(staff + "/{uid}", staff_item, allow_head=False),
        web.get(staff + "/{uid}/content", staff_content, allow_head=False),
        web.get(staff + "/{uid}/preview", staff_preview, allow_head=False),
    ])


# -- JSON ------------------------------------------------------------------------


def upload_json(u: Upload) -> dict[str, Any]:
    """The contract's shape, with what the console needs beside it."""
    return {
        "id": u.id, "filename": u.filename, "size": u.length, "sha256": u.sha256, "content_type": u.content_type,
        "exhibit_ref": u.exhibit_ref, "uploaded_by": u.uploaded_by, "created_at": rfc3339(u.created_at),
        "status": u.status, "received": u.offset, "completed_at": rfc3339(u.completed_at),
        "original_name": u.original_name, "declared_type": u.declared_type,
        "uploader_role": u.uploader_role, "uploader_id": u.uploader_id,
        "quarantined": u.status == "quarantined", "quarantine_reason": u.quarantine_reason,
        "preview": u.has_preview, "preview_skipped": u.preview_skipped, "metadata": u.meta or {},
    }


def receipt_json(u: Upload) -> dict[str, Any]:
    """What the victim is shown: enough to identify the file later, nothing else."""
    return {"id": u.id, "filename": u.filename, "size": u.length, "received": u.offset, "sha256": u.sha256,
            "exhibit_ref": u.exhibit_ref, "status": u.status, "created_at": rfc3339(u.created_at),
            "completed_at": rfc3339(u.completed_at)}


# -- tus -------------------------------------------------------------------------


def json_only(handler: Handler) -> Handler:
    """Errors as JSON, a fault too (logged; the app answers HTML outside ``/api/``)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException:
            raise
        except Exception:
            log.exception("uploads: unhandled error on %s", request.method)
            return error_response(500, "internal_error", "Something went wrong on the server.")

    return wrapped


async def method_not_allowed(request: web.Request) -> web.Response:
    raise ApiError(405, "method_not_allowed", f"{request.method} is not used here.")


async def no_such_path(request: web.Request) -> web.Response:
    raise ApiError(404, "not_found", "No such resource.")


def tus(handler: Handler) -> Handler:
    """tus framing: the version check, ``Tus-Resumable`` on every answer, errors as JSON."""

    async def framed(request: web.Request) -> web.StreamResponse:
        try:
            if request.headers.get("Tus-Resumable") != TUS_VERSION:
                raise ApiError(412, "tus_version", f"Send Tus-Resumable: {TUS_VERSION}.")
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
            if exc.status == 412:
                response.headers["Tus-Version"] = TUS_VERSION
        except ChecksumMismatch:
            response = error_response(460, "checksum_mismatch",
                                      "The data does not match Upload-Checksum; it was discarded. Send it again.")
        response.headers["Tus-Resumable"] = TUS_VERSION
        response.headers["Cache-Control"] = "no-store"
        return response

    return json_only(framed)


async def tus_options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={
        "Tus-Resumable": TUS_VERSION, "Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(request.app[SETTINGS].upload_max_bytes),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    })


def _int_header(request: web.Request, name: str) -> int:
    try:
        return parse_count(request.headers.get(name), name)
    except TextError as exc:
        raise ApiError(400, f"bad_{name.lower().replace('-', '_')}", str(exc)) from None


async def _create(request: web.Request, consultation: Consultation, uploader: Uploader, location: str) -> web.Response:
    if "Upload-Defer-Length" in request.headers:
        raise ApiError(400, "defer_length", "Upload-Defer-Length is not supported: send Upload-Length.")
    length = _int_header(request, "Upload-Length")
    metadata = decode_metadata(request.headers.get("Upload-Metadata", ""))
    upload = await request.app[UPLOADS].create(consultation, uploader, length, metadata)
    return web.Response(status=201,
                        headers={"Location": f"{location}/{upload.id}", "Upload-Offset": str(upload.offset)})


def _not_gone(upload: Upload) -> Upload:
    if upload.status in GONE:
        raise ApiError(410, "upload_gone", f"This upload was {upload.status}; start a new one.")
    return upload


def _head(upload: Upload) -> web.Response:
    _not_gone(upload)
    return web.Response(status=200, headers={"Upload-Offset": str(upload.offset), "Upload-Length": str(upload.length)})


async def _patch(request: web.Request, upload: Upload) -> web.Response:
    _not_gone(upload)
    if request.content_type != OFFSET_TYPE:
        raise ApiError(415, "content_type", f"tus PATCH bodies are {OFFSET_TYPE}.")
    offset = _int_header(request, "Upload-Offset")
    checksum = None
    if "Upload-Checksum" in request.headers:
        algorithm, _, value = request.headers["Upload-Checksum"].strip().partition(" ")
        if algorithm not in CHECKSUMS:
            raise ApiError(400, "checksum_algorithm", f"Upload-Checksum algorithms: {', '.join(CHECKSUMS)}.")
        try:
            checksum = (algorithm, base64.b64decode(value.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_checksum", "Upload-Checksum must be an algorithm and a base64 digest.") from None
    content = request.content

    patch = Patch(lambda: asyncio.wait_for(content.readany(), IDLE_TIMEOUT), request.content_length, checksum)
    done = await request.app[UPLOADS].append(upload.id, offset, patch)
    return web.Response(status=204, headers={"Upload-Offset": str(done.offset)})


async def _delete(request: web.Request, upload: Upload, who: Actor) -> web.Response:
    if upload.status in ("complete", "quarantined") or upload.offset == upload.length:
        raise ApiError(403, "evidence_kept", "A finished upload is evidence and cannot be deleted.")
    await request.app[UPLOADS].terminate(upload, who)
    return web.Response(status=204)


async def _upload(request: web.Request, consultation: Consultation, victim: bool = False) -> Upload:
    """The upload in the path, of this consultation (and the victim's own, for the
    victim: by role, never by a name a member of staff could also have)."""
    uid = request.match_info["uid"]
    upload = None
    if UPLOAD_ID.fullmatch(uid):
        async with request.app[DB]() as db:
            upload = await db.get(Upload, uid)
    if upload is None or upload.consultation_id != consultation.id or (victim and upload.uploader_role != "victim"):
        raise ApiError(404, "not_found", "No such upload.")
    return upload


# -- the victim ------------------------------------------------------------------


def _victim_location(request: web.Request) -> str:
    return f"/j/{request.match_info['token']}/uploads"


async def victim_create(request: web.Request) -> web.Response:
    consultation = await victim_link(request)
    return await _create(request, consultation, Uploader(victim_actor(request)), _victim_location(request))


async def victim_head(request: web.Request) -> web.Response:
    return _head(await _upload(request, await victim_link(request), victim=True))


async def victim_patch(request: web.Request) -> web.Response:
    return await _patch(request, await _upload(request, await victim_link(request), victim=True))


async def victim_delete(request: web.Request) -> web.Response:
    upload = await _upload(request, await victim_link(request), victim=True)
    return await _delete(request, upload, victim_actor(request))


async def victim_receipt(request: web.Request) -> web.Response:
    return web.json_response(receipt_json(await _upload(request, await victim_link(request), victim=True)))


async def victim_list(request: web.Request) -> web.Response:
    consultation = await victim_link(request)
    async with request.app[DB]() as db:
        rows = await db.scalars(select(Upload).where(
            Upload.consultation_id == consultation.id, Upload.uploader_role == "victim").order_by(Upload.created_at))
        return web.json_response({"uploads": [receipt_json(u) for u in rows]})


# -- staff -----------------------------------------------------------------------


async def _staff_and_consultation(request: web.Request, *roles: str) -> tuple[Staff, Consultation]:
    staff = current_staff(request)
    staff.require(*(roles or CALL_ROLES))  # records staff read uploads through retention, with a reason
    async with request.app[DB]() as db:
        consultation = await request.app[CONSULTATIONS].get(db, staff, request.match_info["id"])
    return staff, consultation


async def _staff(request: web.Request, *roles: str) -> tuple[Consultation, Actor]:
    staff, consultation = await _staff_and_consultation(request, *roles)
    return consultation, actor(request, staff)


async def staff_create(request: web.Request) -> web.Response:
    staff, consultation = await _staff_and_consultation(request, *CALL_ROLES)
    uploader = Uploader(actor(request, staff), staff.id)
    return await _create(request, consultation, uploader, f"/api/consultations/{consultation.id}/uploads")


async def staff_head(request: web.Request) -> web.Response:
    consultation, _ = await _staff(request, *CALL_ROLES)
    return _head(await _upload(request, consultation))


async def staff_patch(request: web.Request) -> web.StreamResponse:
    """tus PATCH (``application/offset+octet-stream``), or JSON ``{"exhibit_ref"}``."""
    if request.content_type == OFFSET_TYPE or "Tus-Resumable" in request.headers:
        return await tus(_staff_tus_patch)(request)
    consultation, who = await _staff(request, *CALL_ROLES)
    upload = await _upload(request, consultation)
    body = await read_json(request)
    ref = body.get("exhibit_ref") if isinstance(body, dict) else None
    if not isinstance(ref, str) or not EXHIBIT_REF.fullmatch(ref.strip()):
        raise ApiError(422, "invalid_exhibit_ref", "exhibit_ref must be 1-64 letters, digits, spaces or - / _ .",
                       fields=["exhibit_ref"])
    row = await request.app[UPLOADS].set_exhibit_ref(upload.id, ref.strip(), who)
    return web.json_response(upload_json(row))


async def _staff_tus_patch(request: web.Request) -> web.Response:
    consultation, _ = await _staff(request, *CALL_ROLES)
    return await _patch(request, await _upload(request, consultation))


async def staff_delete(request: web.Request) -> web.Response:
    consultation, who = await _staff(request, *CALL_ROLES)
    return await _delete(request, await _upload(request, consultation), who)


async def staff_list(request: web.Request) -> web.Response:
    consultation, _ = await _staff(request)
    async with request.app[DB]() as db:
        rows = await db.scalars(
            select(Upload).where(Upload.consultation_id == consultation.id).order_by(Upload.created_at))
        return web.json_response({"uploads": [upload_json(u) for u in rows]})


async def staff_item(request: web.Request) -> web.Response:
    consultation, who = await _staff(request)
    upload = await _upload(request, consultation)
    await request.app[AUDIT].record(who, "upload.view", f"upload:{upload.id}", consultation_id=consultation.id,
                                    details={"what": "metadata"})
    return web.json_response(upload_json(upload))


async def staff_preview(request: web.Request) -> web.Response:
    consultation, who = await _staff(request)
    upload = await _upload(request, consultation)
    if not upload.has_preview:
        raise ApiError(404, "no_preview", "This upload has no preview.")
    data = await request.app[STORE].read_bytes(preview_key(upload))
    await request.app[AUDIT].record(who, "upload.view", f"upload:{upload.id}", consultation_id=consultation.id,
                                    details={"what": "preview"})
    # A JPEG the server made itself with Pillow: safe to show inline.
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


def _disposition(filename: str) -> str:
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename) or "upload"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


async def staff_content(request: web.Request) -> web.StreamResponse:
    """The original, decrypted as it streams, always as an attachment."""
    consultation, who = await _staff(request)
    upload = await _upload(request, consultation)
    if upload.status not in ("complete", "quarantined"):
        raise ApiError(409, "not_finished", "This upload has not finished.")
    chunks = request.app[STORE].read(original_key(upload))
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = b""
    except IntegrityError:
        log.error("upload %s does not decrypt to what was stored: integrity failure", upload.id)
        raise ApiError(500, "integrity", "The stored file failed its integrity check; it was not served.") from None
    await request.app[AUDIT].record(who, "upload.download", f"upload:{upload.id}", consultation_id=consultation.id,
                                    details={"sha256": upload.sha256, "size": upload.length})
    safe_type = (upload.content_type if upload.status == "complete" and upload.content_type
                 else "application/octet-stream")
    response = web.StreamResponse(headers={
        "Content-Type": safe_type,
        "Content-Disposition": _disposition(upload.filename),
        "Content-Length": str(upload.length),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "no-store",
        "Digest": f"sha-256={base64.b64encode(bytes.fromhex(upload.sha256 or '')).decode()}",
    })
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:  # an IntegrityError here cuts the response short
        await response.write(chunk)
    await response.write_eof()
    return response
