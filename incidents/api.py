"""The EVR queue over HTTP: incidents, triage, the queue, the call, the investigation
record, the review and the crime outcome (the contract's "Incidents and the EVR
queue"). Who may do what is in :mod:`evr.roles`; the rules in :mod:`.service`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional

from aiohttp import web

from evr.audit.writing import Appender
from evr.auth import Staff
from evr.consultations import ELIGIBILITY, NewConsultation, created_json
from evr.db import Incident, IncidentEvent
from evr.errors import ApiError, forbidden
from evr.http import (
    AUDIT,
    CLOCK,
    CONSULTATIONS,
    DB,
    INCIDENTS,
    QUEUE_BOARD,
    actor,
    base_url,
    current_staff,
    read_json,
    same_origin,
)
from evr.roles import (
    ATTENDANCE_ROLES,
    CRIME_OUTCOME_ROLES,
    INCIDENT_CREATE_ROLES,
    INCIDENT_ROLES,
    INCIDENT_SUPERVISOR_ROLES,
    QUEUE_ROLES,
)
from evr.timeutil import rfc3339

from . import pages
from .service import (
    POSITIVE_OUTCOMES,
    STATES,
    parse_code,
    parse_investigation,
    parse_new,
    parse_review,
    parse_time,
)


def setup(app: web.Application) -> None:
    one = "/api/incidents/{id}"
    app.add_routes([
        web.post("/api/incidents", create),
        web.get("/api/incidents", list_incidents),
        web.get(one, get_incident),
        web.post(one + "/triage", triage),
        web.post(one + "/consultation", start_consultation),
        web.post(one + "/phoned", phoned),
        web.post(one + "/investigation", investigation),
        web.post(one + "/review", review),
        web.post(one + "/crime_outcome", crime_outcome),
        web.post(one + "/attended", attended),
        web.get("/api/queue", queue),
        web.post("/api/queue/take", take),
        web.get("/api/queue/ws", queue_socket),
        web.get("/api/officers", officers),
    ])
    pages.setup(app)


# -- JSON ------------------------------------------------------------------------------


def incident_json(app: web.Application, i: Incident, *, victim: bool = False) -> dict[str, Any]:
    """An incident (:meth:`.service.Incidents.incident_json`) as it is now."""
    return app[INCIDENTS].incident_json(i, app[CLOCK](), victim=victim)


def event_json(e: IncidentEvent) -> dict[str, Any]:
    return {"at": rfc3339(e.at), "kind": e.kind, "from": e.from_state, "to": e.to_state, "actor": e.actor,
            "role": e.role, "reason": e.reason, "details": e.details or {}}


async def _body(request: web.Request) -> Any:
    if not request.body_exists:
        return {}
    return await read_json(request)


async def _view(tx: Appender, request: web.Request, staff: Staff, incident: Incident) -> dict[str, Any]:
    """The incident as it now is, with its timeline: a read of the victim's details,
    audit-logged in ``tx`` (the transaction of the change it answers, if any)."""
    events = await request.app[INCIDENTS].timeline(tx.db, incident.id)
    tx.add(actor(request, staff), "incident.view", f"incident:{incident.id}",
           consultation_id=incident.consultation_id)
    body = incident_json(request.app, incident, victim=True)
    body["timeline"] = [event_json(e) for e in events]
    return body


async def _answer(request: web.Request, staff: Staff, incident_id: str, status: int = 200) -> web.Response:
    """The incident as it now is (:func:`_view`), read in a transaction of its own."""
    async with request.app[AUDIT].transaction() as tx:
        incident = await request.app[INCIDENTS].get(tx.db, staff, incident_id)
        body = await _view(tx, request, staff, incident)
    return web.json_response(body, status=status)


# -- routes ----------------------------------------------------------------------------


async def create(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*INCIDENT_CREATE_ROLES)
    new = parse_new(await read_json(request), request.app[CLOCK]())
    incident = await request.app[INCIDENTS].create(staff, actor(request, staff), new)
    return await _answer(request, staff, incident.id, status=201)


def _time_param(request: web.Request, name: str) -> Optional[datetime]:
    value = request.query.get(name)
    if not value:
        return None
    try:
        return parse_time(value, name)
    except ApiError:
        raise ApiError(400, "invalid_parameter", f"{name} must be an RFC 3339 time.") from None


async def list_incidents(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*INCIDENT_ROLES)
    state = request.query.get("state") or None
    if state is not None and state not in STATES:
        raise ApiError(400, "invalid_parameter", "state must be one of " + ", ".join(STATES) + ".")
    since, until = _time_param(request, "from"), _time_param(request, "to")
    async with request.app[DB]() as db:
        rows = await request.app[INCIDENTS].list(db, staff, state, since, until)
    return web.json_response({"incidents": [incident_json(request.app, i) for i in rows]})


async def get_incident(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*INCIDENT_ROLES)
    return await _answer(request, staff, request.match_info["id"])


async def triage(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*INCIDENT_SUPERVISOR_ROLES)
    body = await read_json(request)
    incident = await request.app[INCIDENTS].triage(staff, actor(request, staff), request.match_info["id"], body)
    return await _answer(request, staff, incident.id)


async def queue(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*QUEUE_ROLES)
    async with request.app[DB]() as db:
        text = await request.app[INCIDENTS].queue_json(db, staff)
    return web.Response(text=text, content_type="application/json")


async def officers(request: web.Request) -> web.Response:
    """``GET /api/officers``: whom a sergeant may allocate to, signed-in ones first."""
    staff = current_staff(request)
    staff.require(*INCIDENT_SUPERVISOR_ROLES)
    async with request.app[DB]() as db:
        found = await request.app[INCIDENTS].officers(db)
    return web.json_response({"officers": found})


async def queue_socket(request: web.Request) -> web.StreamResponse:
    """``GET /api/queue/ws``: the live queue board (:mod:`.board`)."""
    staff = current_staff(request)
    staff.require(*QUEUE_ROLES)
    if not same_origin(request):
        raise forbidden("Cross-origin WebSocket refused.")
    return await request.app[QUEUE_BOARD].serve(request, staff)


async def take(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require("officer")
    async with request.app[AUDIT].transaction() as tx:  # the take and the read of its answer, together
        incident = await request.app[INCIDENTS].take(tx, staff, actor(request, staff))
        body = None if incident is None else await _view(tx, request, staff, incident)
    if body is None:
        return web.Response(status=204)
    return web.json_response(body)


def _dispatched_officer(staff: Staff, incident: Incident) -> None:
    staff.require("officer")
    if incident.dispatched_to != staff.id:
        raise forbidden("Only the officer the incident is dispatched to may do that.", code="not_dispatched_to_you")


async def start_consultation(request: web.Request) -> web.Response:
    """201 the consultation (as ``POST /api/consultations`` answers), with the
    incident's eligibility and contact; the link goes by the victim's preferred
    contact (``phone``: no message, the officer reads the link out). The
    consultation, the incident's step to ``in_call`` and both audit entries commit
    together; then the message goes out."""
    staff = current_staff(request)
    staff.require("officer")
    service, consultations = request.app[INCIDENTS], request.app[CONSULTATIONS]
    who = actor(request, staff)
    async with request.app[AUDIT].transaction() as tx:
        incident = await service.get(tx.db, staff, request.match_info["id"])
        _dispatched_officer(staff, incident)
        if incident.state not in ("dispatched", "evr_desk_enquiries"):  # before the consultation is made
            from .service import STEPS, invalid_state

            raise invalid_state(incident.state, STEPS["call"].allowed)
        victim = {k: v for k, v in incident.victim.items() if k in ("name", "phone", "email")}
        preferred = incident.victim.get("preferred_contact")
        notify = preferred if preferred in ("sms", "email") else None
        new = NewConsultation(incident.cad_ref, victim, {k: True for k in ELIGIBILITY}, notify)
        created = await consultations.create(tx.db, staff, new, base_url(request))
        consultation = created.consultation
        consultation.incident_id = incident.id
        await tx.db.flush()
        tx.add(who, "consultation.create", f"consultation:{consultation.id}", consultation_id=consultation.id,
               details={"collected": sorted(f"victim.{k}" for k in victim), "cad_ref": consultation.cad_ref,
                        "link_sent_by": notify, "incident_id": incident.id})
        await service.apply(tx, incident, "call", who, changes={"consultation_id": consultation.id,
                                                                 "call_closed_at": None},
                            details={"consultation_id": consultation.id, "link_sent_by": preferred})
    message = None
    if created.message is not None and created.link is not None:
        async with request.app[DB]() as db:
            message = await consultations.deliver(db, created.message, created.link)
    return web.json_response(created_json(created, message), status=201)


async def _officer_step(request: web.Request, step: str, changes: Any = None, **kwargs: Any) -> web.Response:
    """A step only the dispatched officer takes, in one transaction with its records."""
    staff = current_staff(request)
    staff.require("officer")
    service = request.app[INCIDENTS]
    async with request.app[AUDIT].transaction() as tx:
        incident = await service.get(tx.db, staff, request.match_info["id"])
        _dispatched_officer(staff, incident)
        made = changes(tx.db, incident) if callable(changes) else changes
        if hasattr(made, "__await__"):
            made = await made
        await service.apply(tx, incident, step, actor(request, staff), changes=made, **kwargs)
    return await _answer(request, staff, incident.id)


async def phoned(request: web.Request) -> web.Response:
    now = request.app[CLOCK]()

    def first_call(_db: Any, incident: Incident) -> dict[str, Any]:
        return {} if incident.phoned_at else {"phoned_at": now}

    return await _officer_step(request, "phoned", first_call, details={"phoned_at": rfc3339(now)})


async def investigation(request: web.Request) -> web.Response:
    record = parse_investigation(await read_json(request))
    service = request.app[INCIDENTS]
    now = request.app[CLOCK]()

    async def submitted(db: Any, incident: Incident) -> dict[str, Any]:
        record["evidence"] = await service.evidence(db, incident.id)
        return {"investigation": record, "submitted_at": now}

    return await _officer_step(request, "submit", submitted, details={"submitted_at": rfc3339(now)})


async def review(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*INCIDENT_SUPERVISOR_ROLES)
    decided = parse_review(await read_json(request))
    service = request.app[INCIDENTS]
    now = request.app[CLOCK]()
    async with request.app[AUDIT].transaction() as tx:
        incident = await service.get(tx.db, staff, request.match_info["id"])
        # Due 24 h after the call closed; a call still open (or none): after the submission.
        due = service.review_due_at(incident)
        overdue = due is not None and now > due
        outcome = {"outcome": decided.outcome, "investigation_plan": decided.plan or None,
                   "reviewer": staff.username, "reviewed_at": rfc3339(now)}
        await service.apply(tx, incident, f"review:{decided.outcome}", actor(request, staff), reason=decided.reason,
                            changes={"reviewed_at": now, "review_overdue": overdue, "review": outcome},
                            details={"outcome": decided.outcome, "review_overdue": overdue,
                                     "investigation_plan": bool(decided.plan)})
    return await _answer(request, staff, incident.id)


async def crime_outcome(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*CRIME_OUTCOME_ROLES)
    code = parse_code(await _body(request))
    service = request.app[INCIDENTS]
    now = request.app[CLOCK]()
    async with request.app[AUDIT].transaction() as tx:
        incident = await service.get(tx.db, staff, request.match_info["id"])
        if staff.role == "officer":
            _dispatched_officer(staff, incident)
        await service.apply(tx, incident, "crime_outcome", actor(request, staff),
                            changes={"crime_outcome": code, "crime_outcome_at": now},
                            details={"code": code, "positive": code in POSITIVE_OUTCOMES})
    return await _answer(request, staff, incident.id)


async def attended(request: web.Request) -> web.Response:
    """In a trial, a control incident's in-person attendance (``{"at"}``), as the
    command-and-control system (or a sergeant) reports it: its response time, for
    comparison with EVR's."""
    staff = current_staff(request)
    staff.require(*ATTENDANCE_ROLES)
    body = await read_json(request)
    now = request.app[CLOCK]()
    at = parse_time(body.get("at") if isinstance(body, dict) else None, "at")
    service = request.app[INCIDENTS]
    async with request.app[AUDIT].transaction() as tx:
        incident = await service.get(tx.db, staff, request.match_info["id"])
        if at < incident.reported_at or at > now + timedelta(minutes=5):
            raise ApiError(422, "invalid_time", "at must be after the report and not in the future.", fields=["at"])
        await service.apply(tx, incident, "attended", actor(request, staff), changes={"arrived_at": at},
                            details={"arrived_at": rfc3339(at)})
    return await _answer(request, staff, incident.id)
