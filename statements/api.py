"""Statements over HTTP: the officer drafts and sends, the victim reads, asks for a
change or signs, staff download the sealed PDF or its disclosure copy (the rear page
withheld). Every step is audit-logged and told live to the consultation's sockets as
``{"type": "statement", "id", "status", "version"}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from sqlalchemy import select

from evr.auth import Staff
from evr.db import (
    Consultation,
    Statement,
    StatementEvent,
    StatementSignature,
    StatementVersion,
)
from evr.errors import ApiError, checked_reason, forbidden, not_found
from evr.http import (
    AUDIT,
    CONSULTATIONS,
    DB,
    HUB,
    STATEMENTS,
    actor,
    current_staff,
    read_json,
    same_origin,
)
from evr.links import victim_actor, victim_link
from evr.roles import CALL_ROLES
from evr.text import JsonError, TextError, clean_header, parse_count, parse_json, plain_text
from evr.timeutil import rfc3339

from . import content as sc
from .service import Rendered, check_signature, check_typed_name

log = logging.getLogger(__name__)

#: Largest sign request (the signature image is limited separately, with a 422).
MAX_SIGN_BODY = 8 * 1024 * 1024
MAX_CHANGE_TEXT = 4000
#: The largest version number (the database column is a 32-bit integer).
MAX_VERSION = 2**31 - 1


def setup(app: web.Application) -> None:
    staff = "/api/consultations/{id}/statements"
    victim = "/j/{token}/statements"
    app.add_routes([
        web.post(staff, create),
        web.get(staff, list_statements),
        web.get(staff + "/{sid}", get_statement),
        web.put(staff + "/{sid}", save),
        web.get(staff + "/{sid}/versions/{version}", get_version),
        web.post(staff + "/{sid}/send", send),
        web.get(staff + "/{sid}/preview", staff_preview),
        web.get(staff + "/{sid}/pdf", download),
        web.get(staff + "/{sid}/disclosure.pdf", disclosure),
        web.get(victim, victim_list),
        web.get(victim + "/{sid}", victim_get),
        web.get(victim + "/{sid}/preview", victim_preview),
        web.post(victim + "/{sid}/sign", victim_sign),
        web.post(victim + "/{sid}/change", victim_change),
    ])


# -- JSON ------------------------------------------------------------------------------


def summary_json(s: Statement) -> dict[str, Any]:
    return {"id": s.id, "consultation_id": s.consultation_id, "status": s.status, "version": s.version,
            "created_by": s.created_by, "created_at": rfc3339(s.created_at), "updated_at": rfc3339(s.updated_at),
            "sent_by": s.sent_by, "sent_at": rfc3339(s.sent_at), "signed_at": rfc3339(s.signed_at),
            "sha256": s.sha256}


def event_json(e: StatementEvent) -> dict[str, Any]:
    return {"at": rfc3339(e.at), "kind": e.kind, "version": e.version, "actor": e.actor, "text": e.text}


def layout_json(rendered: Rendered) -> dict[str, Any]:
    return {"pages": rendered.layout.statement_pages, "declaration": rendered.layout.declaration,
            "sheets": rendered.layout.json(), "document_sha256": rendered.preview_sha256}


async def _tell(request: web.Request, statement: Statement, **extra: Any) -> None:
    """The officer's console and the victim's page follow every step live."""
    await request.app[HUB].broadcast(statement.consultation_id, {
        "type": "statement", "id": statement.id, "status": statement.status, "version": statement.version,
        **extra})


# -- staff -----------------------------------------------------------------------------


async def _consultation(request: web.Request, staff: Staff) -> Consultation:
    staff.require(*CALL_ROLES)  # records staff read statements through retention, with a reason
    async with request.app[DB]() as db:
        return await request.app[CONSULTATIONS].get(db, staff, request.match_info["id"])


async def _staff_statement(request: web.Request, staff: Staff) -> tuple[Consultation, Statement]:
    consultation = await _consultation(request, staff)
    async with request.app[DB]() as db:
        statement = await request.app[STATEMENTS].get(db, consultation, request.match_info["sid"])
    return consultation, statement


def version_number(text: str) -> int:
    """A version number from a path: ASCII digits, from 1 (the service reads 0 as "the
    newest") to what the database's integer holds; 404 otherwise (no such version)."""
    try:
        number = parse_count(text, "version", MAX_VERSION)
    except TextError:
        raise not_found("No such version.") from None
    if number < 1:
        raise not_found("No such version.")
    return number


def _free_text(value: Any, field: str, limit: int, message: str, code: str, multiline: bool = False) -> str:
    """Optional free text (a reason, how the witness was identified, a change asked for):
    a string of at most ``limit`` characters, stripped; controls (NUL, which PostgreSQL
    cannot store) and lone surrogates are refused with 422, and so is a line break unless
    ``multiline``."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit or not plain_text(value, multiline):
        raise ApiError(422, code, message, fields=[field])
    return value.strip()


async def _body(request: web.Request) -> Any:
    """The JSON body; an empty body is an empty object."""
    if not request.body_exists:
        return {}
    return await read_json(request)


async def _parse(request: web.Request, consultation: Consultation, body: Any) -> dict[str, Any]:
    async with request.app[DB]() as db:
        uploads = await request.app[STATEMENTS].uploads(db, consultation, body)
    return sc.parse(body, uploads)


async def create(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    consultation = await _consultation(request, staff)
    if consultation.status == "closed":
        raise ApiError(409, "consultation_closed", "This consultation is closed.")
    body = await read_json(request)
    content = await _parse(request, consultation, body)
    statement = await request.app[STATEMENTS].create(consultation, actor(request, staff), content)
    await _tell(request, statement)
    return web.json_response({**summary_json(statement), "content": content}, status=201)


async def list_statements(request: web.Request) -> web.Response:
    staff = current_staff(request)
    consultation = await _consultation(request, staff)
    async with request.app[DB]() as db:
        rows = await db.scalars(select(Statement).where(Statement.consultation_id == consultation.id)
                                .order_by(Statement.created_at, Statement.id))
        return web.json_response({"statements": [summary_json(s) for s in rows]})


async def get_statement(request: web.Request) -> web.Response:
    staff = current_staff(request)
    consultation, statement = await _staff_statement(request, staff)
    current, rendered = await request.app[STATEMENTS].current(consultation, statement,
                                                              statement.sent_by or staff.username)
    async with request.app[DB]() as db:
        versions = list(await db.scalars(select(StatementVersion).where(StatementVersion.statement_id == statement.id)
                                         .order_by(StatementVersion.version)))
        events = list(await db.scalars(select(StatementEvent).where(StatementEvent.statement_id == statement.id)
                                       .order_by(StatementEvent.id)))
        signature = await db.get(StatementSignature, statement.id)
    await request.app[AUDIT].record(actor(request, staff), "statement.view", f"statement:{statement.id}",
                                    consultation_id=consultation.id, details={"version": statement.version})
    change = events[-1].text if events and events[-1].kind == "change_requested" else None
    return web.json_response({
        **summary_json(statement), "content": current.content, "content_sha256": current.content_sha256,
        "identification": statement.identification, "change_request": change,
        **layout_json(rendered),
        "versions": [{"version": v.version, "saved_by": v.saved_by, "saved_at": rfc3339(v.saved_at),
                      "content_sha256": v.content_sha256} for v in versions],
        "events": [event_json(e) for e in events],
        "signing_record": signature.record if signature else None,
    })


async def get_version(request: web.Request) -> web.Response:
    staff = current_staff(request)
    consultation, statement = await _staff_statement(request, staff)
    number = version_number(request.match_info["version"])
    async with request.app[DB]() as db:
        version = await request.app[STATEMENTS].version(db, statement, number)
    await request.app[AUDIT].record(actor(request, staff), "statement.view", f"statement:{statement.id}",
                                    consultation_id=consultation.id, details={"version": version.version})
    return web.json_response({"version": version.version, "content": version.content,
                              "content_sha256": version.content_sha256, "saved_by": version.saved_by,
                              "saved_at": rfc3339(version.saved_at)})


async def save(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    consultation, statement = await _staff_statement(request, staff)
    body = await read_json(request)
    base = body.get("version") if isinstance(body, dict) else None
    if base is not None and (isinstance(base, bool) or not isinstance(base, int)):
        raise ApiError(422, "invalid_statement", "version must be the version number you edited.", fields=["version"])
    content = await _parse(request, consultation, body)
    statement, saved, cancelled = await request.app[STATEMENTS].save(statement, actor(request, staff), content, base)
    if saved:
        await _tell(request, statement, **({"signature_cancelled": True} if cancelled else {}))
    return web.json_response({**summary_json(statement), "saved": saved, "signature_cancelled": cancelled})


async def send(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    consultation, statement = await _staff_statement(request, staff)
    body = await _body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "Send a JSON object (or nothing).")
    identification = _free_text(body.get("identification"), "identification", 1000,
                                "identification: how the witness was identified (up to 1000 characters).",
                                code="invalid_identification", multiline=True)
    base = body.get("version")
    if base is not None and (isinstance(base, bool) or not isinstance(base, int)):
        raise ApiError(422, "invalid_statement", "version must be the version number you sent.", fields=["version"])
    statement, sent = await request.app[STATEMENTS].send(consultation, statement, actor(request, staff),
                                                         identification or None, base)
    if sent:
        await _tell(request, statement)
    return web.json_response({"id": statement.id, "status": statement.status, "version": statement.version})


def _pdf_response(data: bytes, name: str, attachment: bool) -> web.Response:
    disposition = "attachment" if attachment else "inline"
    return web.Response(body=data, content_type="application/pdf", headers={
        "Content-Disposition": f'{disposition}; filename="{name}"',
        "Cache-Control": "no-store",
    })


async def staff_preview(request: web.Request) -> web.Response:
    """The current version as the witness will see it, unsigned."""
    staff = current_staff(request)
    consultation, statement = await _staff_statement(request, staff)
    _, rendered = await request.app[STATEMENTS].current(consultation, statement, statement.sent_by or staff.username)
    await request.app[AUDIT].record(actor(request, staff), "statement.preview", f"statement:{statement.id}",
                                    consultation_id=consultation.id, details={"version": statement.version})
    return _pdf_response(rendered.preview, f"statement-{statement.id}-v{statement.version}-unsigned.pdf", False)


async def download(request: web.Request) -> web.Response:
    """The sealed PDF, as stored (every download is in the audit log)."""
    staff = current_staff(request)
    reason = checked_reason(request.query.get("reason"), required=False)
    consultation, statement = await _staff_statement(request, staff)
    if statement.status != "signed":
        raise ApiError(409, "not_signed", "This statement has not been signed yet.")
    data = await request.app[STATEMENTS].pdf(consultation, statement)
    await request.app[AUDIT].record(actor(request, staff), "statement.download", f"statement:{statement.id}",
                                    consultation_id=consultation.id, reason=reason,
                                    details={"sha256": statement.sha256})
    return _pdf_response(data, f"statement-{statement.id}.pdf", True)


async def disclosure(request: web.Request) -> web.Response:
    """The sealed statement's disclosure copy: its statement pages without the rear page
    (the witness's personal details), marked and signed by the service. Who may download
    the sealed PDF may download this, on the same terms; every copy is in the audit log
    (``statement.disclosure``) with the original's SHA-256, as s.62 asks of a disclosure."""
    staff = current_staff(request)
    reason = checked_reason(request.query.get("reason"), required=False)
    consultation, statement = await _staff_statement(request, staff)
    copy = await request.app[STATEMENTS].disclosure_copy(consultation, statement)
    await request.app[AUDIT].record(actor(request, staff), "statement.disclosure", f"statement:{statement.id}",
                                    consultation_id=consultation.id, reason=reason,
                                    details={"original_sha256": copy.original_sha256, "sha256": copy.sha256,
                                             "version": copy.version, "pages": copy.pages})
    return _pdf_response(copy.pdf, copy.filename, True)


# -- the victim ------------------------------------------------------------------------


async def _victim_statement(request: web.Request, sent_only: bool = True) -> tuple[Consultation, Statement]:
    consultation = await victim_link(request)
    async with request.app[DB]() as db:
        statement = await request.app[STATEMENTS].get(db, consultation, request.match_info["sid"])
    if sent_only and statement.status in ("draft", "sealing"):
        raise ApiError(409, "not_awaiting_signature", "This statement is not waiting for your signature.")
    return consultation, statement


async def _victim_rendered(request: web.Request, consultation: Consultation, statement: Statement) -> Rendered:
    assert statement.sent_by is not None
    return (await request.app[STATEMENTS].current(consultation, statement, statement.sent_by))[1]


async def victim_list(request: web.Request) -> web.Response:
    """Statements sent to this link (not drafts)."""
    consultation = await victim_link(request)
    async with request.app[DB]() as db:
        rows = await db.scalars(select(Statement).where(
            Statement.consultation_id == consultation.id, Statement.status.in_(("awaiting_signature", "signed")))
            .order_by(Statement.created_at, Statement.id))
        return web.json_response({"statements": [
            {"id": s.id, "status": s.status, "version": s.version, "sha256": s.sha256} for s in rows]})


async def victim_get(request: web.Request) -> web.Response:
    consultation, statement = await _victim_statement(request)
    rendered = await _victim_rendered(request, consultation, statement)
    content = rendered.doc.content
    await request.app[AUDIT].record(victim_actor(request), "statement.view", f"statement:{statement.id}",
                                    consultation_id=consultation.id, details={"version": statement.version})
    return web.json_response({
        "id": statement.id, "status": statement.status, "version": statement.version,
        "text": content["text"], **layout_json(rendered),
        "preview_url": f"/j/{request.match_info['token']}/statements/{statement.id}/preview",
        "witness": content["witness"], "exhibits": content["exhibits"],
        "read_to_witness": content.get("read_to_witness"), "officer": statement.sent_by,
        "sha256": statement.sha256,
    })


async def victim_preview(request: web.Request) -> web.Response:
    consultation, statement = await _victim_statement(request)
    rendered = await _victim_rendered(request, consultation, statement)
    await request.app[AUDIT].record(victim_actor(request), "statement.preview", f"statement:{statement.id}",
                                    consultation_id=consultation.id, details={"version": statement.version})
    return _pdf_response(rendered.preview, "statement.pdf", False)


async def _read_limited(request: web.Request, limit: int) -> Any:
    """A JSON body of up to ``limit`` bytes (over the application's usual limit), read
    by :func:`evr.text.parse_json` like every other body: 400 when it is not UTF-8 JSON
    or nests too deep, 422 for a lone surrogate."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", "The request body is too large.")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise ApiError(413, "too_large", "The request body is too large.")
    try:
        return parse_json(bytes(data).decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "The body is not valid JSON (nor UTF-8 text).") from None
    except JsonError as exc:
        raise ApiError(400 if exc.code == "malformed_json" else 422, exc.code, str(exc)) from None


def _same_origin(request: web.Request) -> None:
    if not same_origin(request):
        raise forbidden("Cross-origin request refused.", "cross_origin")


async def victim_sign(request: web.Request) -> web.Response:
    _same_origin(request)
    consultation, statement = await _victim_statement(request, sent_only=False)
    body = await _read_limited(request, MAX_SIGN_BODY)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "Send a JSON object.")
    if statement.status != "awaiting_signature":
        code, message = ("already_signed", "This statement has already been signed.") if statement.status == "signed" \
            else ("not_awaiting_signature", "This statement is not waiting for your signature.")
        raise ApiError(409, code, message)
    if body.get("declaration_accepted") is not True:
        raise ApiError(422, "declaration_not_accepted", "Confirm the declaration before signing.",
                       fields=["declaration_accepted"])
    typed_name = check_typed_name(body.get("typed_name"))
    image = await asyncio.to_thread(check_signature, body.get("signature_png"))
    shown = body.get("document_sha256")
    if shown is not None and not isinstance(shown, str):
        raise ApiError(422, "invalid", "document_sha256 must be the hash you were shown.", fields=["document_sha256"])
    user_agent = clean_header(request.headers.get("User-Agent"), 512)
    signature = await request.app[STATEMENTS].sign(consultation, statement, image, typed_name, shown,
                                                   victim_actor(request), user_agent)
    await _tell(request, statement, sha256=signature.document_sha256, pages=signature.pages)
    return web.json_response({"id": statement.id, "status": "signed", "sha256": signature.document_sha256,
                              "pages": signature.pages, "signed_at": rfc3339(signature.signed_at)})


async def victim_change(request: web.Request) -> web.Response:
    """The victim asks for a change: the statement goes back to the officer as a draft."""
    _same_origin(request)
    consultation, statement = await _victim_statement(request, sent_only=False)
    body = await read_json(request)
    message = _free_text(body.get("message") if isinstance(body, dict) else None, "message", MAX_CHANGE_TEXT,
                         f"Say what should change (up to {MAX_CHANGE_TEXT} characters).", code="invalid_message",
                         multiline=True)
    if not message:
        raise ApiError(422, "invalid_message", f"Say what should change (up to {MAX_CHANGE_TEXT} characters).",
                       fields=["message"])
    statement = await request.app[STATEMENTS].request_change(statement, victim_actor(request), message)
    await _tell(request, statement, change_requested=True)
    return web.json_response({"id": statement.id, "status": statement.status, "version": statement.version})
