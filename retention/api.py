"""Retention and the audit log over HTTP, the records console, and the scheduled sweep.

Roles: officers (for consultations they may see) and sergeants set a consultation's
retention class; records staff see the schedule, review, hold, release, dispose and
open content (only with a reason, logged); records and admin staff search the audit
log. Nothing here, or anywhere, deletes an audit entry.
"""

from __future__ import annotations

import csv
import io
import logging
import uuid
from datetime import datetime
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web

from evr import pages
from evr.audit import AuditQuery, entry_json, search
from evr.auth import Staff
from evr.errors import ApiError, bad_request, not_found
from evr.http import (
    AUDIT,
    CLOCK,
    CONSULTATIONS,
    DB,
    RETENTION,
    actor,
    current_staff,
    read_json,
)
from evr.roles import CALL_ROLES
from evr.text import TextError, parse_count, plain_text

from .policy import ASSESSMENT_CRITERIA, parse_date, parse_time
from .service import CSV_COLUMNS

log = logging.getLogger(__name__)

RECORDS = ("records",)
AUDIT_READERS = ("records", "admin")
MAX_PAGE = 500
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(app: web.Application) -> None:
    """The records pages' routes (the service and its sweep: :func:`evr.services.services`)."""
    app.add_routes([
        web.get("/records", records_page),
        web.get("/api/audit", audit_search),
        web.get("/api/consultations/{id}/retention", get_class),
        web.put("/api/consultations/{id}/retention", set_class),
        web.get("/api/retention/classes", classes),
        web.get("/api/retention/due", due),
        web.get("/api/retention/schedule.csv", schedule_csv),
        web.get("/api/retention/consultations/{id}/items", consultation_items),
        web.get("/api/retention/items/{item}", item),
        web.get("/api/retention/items/{item}/content", content),
        web.post("/api/retention/review", review),
        web.post("/api/retention/hold", hold),
        web.post("/api/retention/release", release),
        web.post("/api/retention/dispose", dispose),
        web.get("/api/retention/holds", holds),
        web.get("/api/retention/certificates", certificates),
        web.get("/api/retention/certificates/{cert}", certificate),
    ])


# -- helpers -------------------------------------------------------------------


def _records(request: web.Request, *roles: str) -> Staff:
    staff = current_staff(request)
    staff.require(*(roles or RECORDS))
    return staff


# Query parameters come from anyone who can type a URL: each is checked here, once,
# and anything unusable is a 400 naming it (never a 500 from the database or the
# audit log's hash, which cannot take NUL or a lone surrogate).

#: Longest free-text query value (an object name, an actor, an action).
MAX_QUERY_TEXT = 200
#: The largest entry id a cursor may name (the column is a 32-bit integer on PostgreSQL).
MAX_CURSOR = 2**31 - 1


def query_text(value: Optional[str], name: str, limit: int = MAX_QUERY_TEXT) -> Optional[str]:
    """A free-text query value, or None when absent or empty: 400 when longer than
    ``limit`` or holding control characters or lone surrogates."""
    if not value:
        return None
    if len(value) > limit or not plain_text(value, multiline=False):
        raise bad_request(f"{name} must be text of at most {limit} characters, without control characters.",
                          "invalid_parameter")
    return value


def query_time(value: Optional[str], name: str) -> Optional[datetime]:
    """A date or RFC 3339 time from the query (None when absent or empty); 400 otherwise,
    also for times that exist in no calendar once moved to UTC (0001-01-01T00:00+14:00)."""
    value = query_text(value, name, 64)
    if value is None:
        return None
    try:
        return parse_time(value, name)
    except ValueError as exc:
        raise bad_request(str(exc), "invalid_parameter") from None


def query_count(value: Optional[str], name: str, default: int, high: int) -> int:
    """A whole number from 1 to ``high`` written with the ASCII digits 0-9 (``²`` and
    Arabic-Indic digits are not numbers here), ``default`` when absent or empty; 400
    otherwise."""
    if value in (None, ""):
        return default
    try:
        number = parse_count(value, name, high)
    except TextError:
        number = 0
    if not 1 <= number <= high:
        raise bad_request(f"{name} must be a whole number from 1 to {high}.", "invalid_parameter")
    return number


def query_id(value: Optional[str], name: str) -> Optional[str]:
    """An id (a UUID) to filter by, or None when absent or empty; 400 otherwise."""
    if value in (None, ""):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise bad_request(f"{name} must be an id.", "invalid_parameter") from None


def _time(request: web.Request, name: str) -> Optional[datetime]:
    return query_time(request.query.get(name), name)


def _int(request: web.Request, name: str, default: int, high: int) -> int:
    return query_count(request.query.get(name), name, default, high)


def _text(request: web.Request, name: str) -> Optional[str]:
    return query_text(request.query.get(name), name)


def audit_cursor(value: Optional[str]) -> Optional[int]:
    """``cursor`` of the audit search: an entry id (from ``next_cursor``); 400 otherwise."""
    if value in (None, ""):
        return None
    try:
        return parse_count(value, "cursor", MAX_CURSOR)
    except TextError:
        raise bad_request("cursor must be an entry id (from next_cursor).", "invalid_parameter") from None


def due_cursor(value: Optional[str]) -> Optional[tuple[datetime, str]]:
    """``cursor`` of the due list: ``<due time>|<item id>`` (from ``next_cursor``); 400 otherwise."""
    if value in (None, ""):
        return None
    try:
        stamp, item_id = value.split("|", 1)
        return parse_time(stamp, "cursor"), str(uuid.UUID(item_id))
    except ValueError:
        raise bad_request("cursor must be a next_cursor value.", "invalid_parameter") from None


def _only(request: web.Request, *known: str) -> None:
    unknown = sorted(set(request.query) - set(known))
    if unknown:
        raise bad_request(f"Unknown parameter(s): {', '.join(unknown)} (known: {', '.join(known)}).",
                          "unknown_parameter")


def _uuid(value: Any, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise not_found(f"No such {what}.") from None


async def _body(request: web.Request, *required: str) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    missing = [k for k in required if body.get(k) in (None, "")]
    if missing:
        raise ApiError(422, "missing_field", f"Missing: {', '.join(missing)}.", fields=missing)
    for key in ("id", "reason", "decision", "class", "next_review", "subject_dob"):
        if key in body and body[key] is not None and not isinstance(body[key], str):
            raise ApiError(422, "invalid_field", f"{key} must be a string.", fields=[key])
    return body


def _parsed(body: dict[str, Any], name: str, parse: Callable[[str, str], Any], code: str) -> Any:
    """An optional date field of a body, parsed; 422 naming it when it does not parse."""
    if not body.get(name):
        return None
    try:
        return parse(body[name], name)
    except ValueError as exc:
        raise ApiError(422, code, str(exc), fields=[name]) from None


# -- the records console ---------------------------------------------------------


async def records_page(_request: web.Request) -> web.Response:
    return pages.staff_page("records.html")


# -- the audit log ---------------------------------------------------------------


async def audit_search(request: web.Request) -> web.Response:
    """``GET /api/audit``: filter by object, consultation, actor, action (or family
    ``retention.``), since/until; ``cursor`` and ``order`` page through."""
    staff = _records(request, *AUDIT_READERS)
    _only(request, "object", "consultation", "actor", "action", "since", "until", "cursor", "order", "limit")
    order = request.query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc.", "invalid_parameter")
    q = AuditQuery(
        object=_text(request, "object"), consultation_id=_text(request, "consultation"),
        actor=_text(request, "actor"), action=_text(request, "action"),
        since=_time(request, "since"), until=_time(request, "until"),
        cursor=audit_cursor(request.query.get("cursor")), descending=order == "desc",
        limit=_int(request, "limit", 100, MAX_PAGE),
    )
    async with request.app[DB]() as db:
        entries = await search(db, q)
    filters = {k: v for k, v in request.query.items() if k not in ("cursor", "order", "limit")}
    await request.app[AUDIT].record(actor(request, staff), "audit.search", "audit_log",
                                    details={"filters": filters, "returned": len(entries)})
    next_cursor = str(entries[-1].id) if len(entries) == q.limit else None
    return web.json_response({"entries": [entry_json(e) for e in entries], "next_cursor": next_cursor})


# -- a consultation's class ------------------------------------------------------


async def _visible_consultation(request: web.Request, staff: Staff) -> str:
    """The consultation id, if this member of staff may see it (records staff see all;
    admin none: it manages users, not consultations)."""
    cid = _uuid(request.match_info["id"], "consultation")
    if staff.role == "records":
        return cid
    async with request.app[DB]() as db:
        await request.app[CONSULTATIONS].get(db, staff, cid)
    return cid


async def get_class(request: web.Request) -> web.Response:
    staff = current_staff(request)
    cid = await _visible_consultation(request, staff)
    return web.json_response(await request.app[RETENTION].assignment(cid))


async def set_class(request: web.Request) -> web.Response:
    """``PUT /api/consultations/{id}/retention`` ``{"class", "reason", "subject_dob"?}``."""
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    cid = await _visible_consultation(request, staff)
    body = await _body(request, "class", "reason")
    dob = _parsed(body, "subject_dob", parse_date, "invalid_dob")
    result = await request.app[RETENTION].set_class(actor(request, staff), cid, body["class"],
                                                          body["reason"], dob)
    return web.json_response(result)


async def classes(request: web.Request) -> web.Response:
    current_staff(request)
    service = request.app[RETENTION]
    return web.json_response({
        "classes": [{"name": c.name, "label": c.label, "rule": c.describe(), "action": c.action}
                    for c in service.policy.classes.values()],
        "default_class": service.policy.default_class,
        "criteria": ASSESSMENT_CRITERIA,
    })


# -- the schedule ----------------------------------------------------------------


async def due(request: web.Request) -> web.Response:
    """``GET /api/retention/due?before=&limit=&cursor=``: soonest first, held ones marked."""
    _records(request)
    _only(request, "before", "limit", "cursor")
    service = request.app[RETENTION]
    after = due_cursor(request.query.get("cursor"))
    limit = _int(request, "limit", 200, MAX_PAGE)
    await service.refresh()
    rows = await service.due(_time(request, "before"), limit, after)
    last = rows[-1] if len(rows) == limit else None
    return web.json_response({
        "items": [r.json() for r in rows],
        "next_cursor": f"{last.due_key()[0].isoformat()}|{last.item_id}" if last else None,
    })


async def schedule_csv(request: web.Request) -> web.StreamResponse:
    """The due schedule as CSV, logged as an export before a row of it leaves (an
    export whose entry cannot be written is not sent)."""
    staff = _records(request)
    _only(request, "before")
    service = request.app[RETENTION]
    before = _time(request, "before") or request.app[CLOCK]()
    await service.refresh()
    rows = await service.count_due(before)
    await request.app[AUDIT].record(actor(request, staff), "retention.export", "retention_schedule",
                                    details={"before": before.isoformat(), "rows": rows, "format": "csv"})
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="retention-schedule-{before.date().isoformat()}.csv"',
    })
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    async for row in service.stream_due(before):
        writer.writerow(row.csv())
        if buffer.tell() > 64 * 1024:
            await response.write(buffer.getvalue().encode())
            buffer.seek(0), buffer.truncate()
    await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response


async def consultation_items(request: web.Request) -> web.Response:
    _records(request)
    cid = _uuid(request.match_info["id"], "consultation")
    service = request.app[RETENTION]
    await service.refresh()
    return web.json_response({"consultation": await service.assignment(cid),
                              "items": [r.json() for r in await service.items_of(cid)]})


async def item(request: web.Request) -> web.Response:
    """An item's metadata, hashes, schedule, reviews, holds, certificate and audit trail."""
    staff = _records(request)
    item_id = _uuid(request.match_info["item"], "evidence item")
    service = request.app[RETENTION]
    body = await service.item(item_id)
    obj = f"{body['kind']}:{item_id}"
    async with request.app[DB]() as db:
        trail = await search(db, AuditQuery(object=obj, limit=MAX_PAGE))
    await request.app[AUDIT].record(actor(request, staff), "retention.item_view", obj,
                                    consultation_id=body["consultation_id"])
    body["audit"] = [entry_json(e) for e in trail]
    return web.json_response(body)


async def content(request: web.Request) -> web.StreamResponse:
    """``GET .../content?key=&reason=``: one stored object, opened with a logged reason."""
    staff = _records(request)
    _only(request, "key", "reason")
    item_id = _uuid(request.match_info["item"], "evidence item")
    key, reason = query_text(request.query.get("key"), "key", 1024), request.query.get("reason", "")
    if not key:
        raise bad_request("Name the object to open (key).", "missing_key")
    chunks = await request.app[RETENTION].open_content(actor(request, staff), item_id, key, reason)
    response = web.StreamResponse(headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{key.rsplit("/", 1)[-1]}"',
    })
    await response.prepare(request)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


# -- decisions -------------------------------------------------------------------


async def review(request: web.Request) -> web.Response:
    """``{"id", "decision": "retain|dispose", "reason", "next_review"?, "criteria"?: [...]}``."""
    staff = _records(request)
    body = await _body(request, "id", "decision", "reason")
    next_review = _parsed(body, "next_review", parse_time, "invalid_next_review")
    criteria = body.get("criteria") or []
    if not isinstance(criteria, list) or not all(isinstance(c, str) for c in criteria):
        raise ApiError(422, "invalid_criteria", "criteria must be a list of criterion names.", fields=["criteria"])
    reviews = await request.app[RETENTION].review(actor(request, staff), body["id"], body["decision"],
                                                        body["reason"], next_review, criteria)
    return web.json_response({"reviews": reviews}, status=201)


async def hold(request: web.Request) -> web.Response:
    staff = _records(request)
    body = await _body(request, "id", "reason")
    placed = await request.app[RETENTION].hold(actor(request, staff), body["id"], body["reason"])
    return web.json_response({"hold": placed}, status=201)


async def release(request: web.Request) -> web.Response:
    staff = _records(request)
    body = await _body(request, "id", "reason")
    released = await request.app[RETENTION].release(actor(request, staff), body["id"], body["reason"])
    return web.json_response({"released": released})


async def dispose(request: web.Request) -> web.Response:
    """``{"ids": [...]}`` or ``{"due": true}``, dry unless ``"execute": true``; at most
    ``limit`` (default 1000) items a request."""
    staff = _records(request)
    body = await _body(request)
    ids: Optional[list[str]] = body.get("ids")
    if ids is not None and (not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids)):
        raise ApiError(422, "invalid_ids", "ids must be a non-empty list of item ids.", fields=["ids"])
    if (ids is None) == (body.get("due") is not True):
        raise ApiError(422, "missing_field", "Send either ids or \"due\": true.", fields=["ids", "due"])
    if ids is not None:
        ids = [_uuid(i, "evidence item") for i in ids]
    limit = body.get("limit", 1000)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10000:
        raise ApiError(422, "invalid_limit", "limit must be a whole number from 1 to 10000.", fields=["limit"])
    report = await request.app[RETENTION].dispose(actor(request, staff), ids, execute=body.get("execute") is True,
                                                        limit=limit)
    return web.json_response(report.json())


async def holds(request: web.Request) -> web.Response:
    """``GET /api/retention/holds?all=1``: the legal holds in force (or every one)."""
    _records(request)
    _only(request, "all")
    every = request.query.get("all") in ("1", "true")
    return web.json_response({"holds": await request.app[RETENTION].holds(active=not every)})


async def certificates(request: web.Request) -> web.Response:
    _records(request)
    _only(request, "consultation", "item", "before", "limit")
    rows = await request.app[RETENTION].certificates(
        query_id(request.query.get("consultation"), "consultation"), query_id(request.query.get("item"), "item"),
        _time(request, "before"), _int(request, "limit", 100, MAX_PAGE))
    return web.json_response({"certificates": rows})


async def certificate(request: web.Request) -> web.Response:
    _records(request)
    cert_id = _uuid(request.match_info["cert"], "disposal certificate")
    return web.json_response(await request.app[RETENTION].certificate(cert_id))
