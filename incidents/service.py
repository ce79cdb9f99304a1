"""Incidents and the EVR queue: the rules and the storage, no HTTP.

The state machine is one table (:data:`STEPS`: each step, the states it may happen
in, the state it leads to) and one function that applies a step
(:meth:`Incidents.apply`): a conditional UPDATE on the state it read (so of any
number of takers exactly one wins, on both databases), the timeline row and the
audit entry, all in the caller's transaction (:meth:`evr.audit.AuditLog.transaction`),
so a change and its record commit together or not at all.

    triage → queued | allocated | rejected
    (in a trial, a control incident is entered as ``control`` and stays there)
    queued | allocated → dispatched → in_call → awaiting_review
    awaiting_review → finalised | patrol_suspect | patrol_enquiries | evr_desk_enquiries
    evr_desk_enquiries → in_call (another call) | awaiting_review (submitted again)
"""

from __future__ import annotations

import builtins
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional, cast

from sqlalchemy import CursorResult, false, func, not_, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from evr.audit import Actor, AuditLog
from evr.audit.writing import Appender
from evr.auth import Staff
from evr.config import Settings
from evr.consultations import CAD_REF, ELIGIBILITY, EMAIL, PHONE
from evr.db import (
    INCIDENT_CLOSED_STATES,
    Consultation,
    Incident,
    IncidentEvent,
    Recording,
    StaffSession,
    Statement,
    Upload,
    User,
)
from evr.errors import ApiError, checked_reason, not_found
from evr.evaluation.trial import TrialDesign
from evr.roles import INCIDENT_ALL_ROLES
from evr.text import plain_text
from evr.timeutil import Clock, rfc3339

from .queueview import QueueView
from .webhooks import Webhooks, events_for

log = logging.getLogger(__name__)

OUTCOMES = ("finalised", "patrol_suspect", "patrol_enquiries", "evr_desk_enquiries")
#: ``control``: in a trial, an incident of the control arm (normal dispatch; kept for comparison only).
STATES = ("triage", "queued", "allocated", "rejected", "dispatched", "in_call", "awaiting_review", *OUTCOMES,
          "control")
#: States after the call has started (a crime outcome may be recorded from then on).
AFTER_CALL = ("in_call", "awaiting_review", *OUTCOMES)
#: Home Office crime outcomes: 1-22; 1-8 are positive (charge, cautions, community resolution...).
CRIME_OUTCOMES = range(1, 23)
POSITIVE_OUTCOMES = range(1, 9)
#: A review later than this after the call closed is overdue.
REVIEW_WITHIN = timedelta(hours=24)
MAX_TEXT = 10_000
LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$")


@dataclass(frozen=True)
class Step:
    """A step of an incident: the audit action, where it may happen, where it leads
    (None: the state stays, the step is only on the timeline)."""

    action: str
    allowed: tuple[str, ...]
    to: Optional[str]


#: The state machine: every step an incident may take, in one table.
STEPS: dict[str, Step] = {
    "queue": Step("incident.triage", ("triage",), "queued"),
    "allocate": Step("incident.triage", ("triage",), "allocated"),
    "reject": Step("incident.triage", ("triage",), "rejected"),
    "take": Step("incident.take", ("queued", "allocated"), "dispatched"),
    "call": Step("incident.call", ("dispatched", "evr_desk_enquiries"), "in_call"),
    "arrived": Step("incident.arrived", ("in_call",), None),
    "phoned": Step("incident.phoned", ("dispatched", "in_call", "evr_desk_enquiries"), None),
    "call_closed": Step("incident.call_closed", AFTER_CALL, None),
    "submit": Step("incident.investigation", ("in_call", "evr_desk_enquiries"), "awaiting_review"),
    **{f"review:{o}": Step("incident.review", ("awaiting_review",), o) for o in OUTCOMES},
    "crime_outcome": Step("incident.crime_outcome", (*AFTER_CALL, "control"), None),
    # A control incident's in-person attendance, as the command-and-control system reports it.
    "attended": Step("incident.attended", ("control",), None),
}


def invalid_state(current: str, allowed: tuple[str, ...]) -> ApiError:
    expected = " or ".join(allowed)
    return ApiError(409, "invalid_state", f"The incident is {current}; it must be {expected} for that.",
                    state=current, expected=list(allowed))


class Lost(Exception):
    """Another request changed the incident's state first (the conditional UPDATE
    matched nothing)."""


# -- parsing what comes in ----------------------------------------------------------------


def _text(value: Any, field: str, limit: int, *, required: bool = False, multiline: bool = True) -> str:
    if value is None or value == "":
        if required:
            raise ApiError(422, f"{field.rsplit('.', 1)[-1]}_required", f"{field} is required.", fields=[field])
        return ""
    if not isinstance(value, str) or len(value) > limit or not plain_text(value, multiline):
        raise ApiError(422, "invalid_text", f"{field} must be text of at most {limit} characters "
                                            "without control characters.", fields=[field])
    return value.strip()


def _bool(value: Any, field: str, default: Optional[bool] = None) -> bool:
    if value is None and default is not None:
        return default
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_boolean", f"{field} must be true or false.", fields=[field])
    return value


def _texts(value: Any, field: str, limit: int = 2000, most: int = 50) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > most:
        raise ApiError(422, "invalid_list", f"{field} must be a list of at most {most} texts.", fields=[field])
    return [_text(v, f"{field}[{i}]", limit) for i, v in enumerate(value)]


def _free(value: Any, field: str, depth: int = 0) -> Any:
    """Free-form JSON (a witness's details): every string plain text, bounded."""
    if depth > 4:
        raise ApiError(422, "invalid_value", f"{field} is nested too deeply.", fields=[field])
    if isinstance(value, str):
        return _text(value, field, 2000)
    if isinstance(value, list):
        return [_free(v, field, depth + 1) for v in value[:50]]
    if isinstance(value, dict):
        return {_text(k, field, 64, multiline=False): _free(v, field, depth + 1) for k, v in list(value.items())[:30]}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise ApiError(422, "invalid_value", f"{field} holds a value of an unknown kind.", fields=[field])


def parse_time(value: Any, field: str) -> datetime:
    """An RFC 3339 time with its offset (ASCII digits only), in UTC."""
    if not isinstance(value, str) or not value.isascii() or len(value) > 40:
        raise ApiError(422, "invalid_time", f"{field} must be an RFC 3339 time.", fields=[field])
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
        if parsed.tzinfo is None:
            raise ApiError(422, "invalid_time", f"{field} must carry its offset (e.g. Z).", fields=[field])
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved to UTC
        raise ApiError(422, "invalid_time", f"{field} must be an RFC 3339 time.", fields=[field]) from None


@dataclass(frozen=True)
class NewIncident:
    cad_ref: str
    grade: int
    category: str
    reported_at: datetime
    summary: str
    victim: dict[str, str]
    vulnerability: bool
    high_harm: bool


def parse_new(body: Any, now: datetime) -> NewIncident:
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    cad_ref = body.get("cad_ref")
    if not isinstance(cad_ref, str) or not CAD_REF.match(cad_ref):
        raise ApiError(422, "invalid_cad_ref", "cad_ref must be a CAD reference (letters, digits, - / _ .).",
                       fields=["cad_ref"])
    eligibility = body.get("eligibility")
    eligibility = eligibility if isinstance(eligibility, dict) else {}
    failing = [name for name in ELIGIBILITY if eligibility.get(name) is not True]
    if failing:
        raise ApiError(422, "not_eligible", "Not eligible for a video response: " + ", ".join(failing)
                       + " must be true.", fields=failing)
    grade = body.get("grade")
    if not isinstance(grade, int) or isinstance(grade, bool) or not 1 <= grade <= 5:
        raise ApiError(422, "invalid_grade", "grade must be a whole number from 1 to 5.", fields=["grade"])
    reported = body.get("reported_at")
    reported_at = now if reported is None else parse_time(reported, "reported_at")
    if reported_at > now + timedelta(minutes=5) or reported_at.year < 2000:
        raise ApiError(422, "invalid_time", "reported_at must not be in the future.", fields=["reported_at"])
    victim_in = body.get("victim") or {}
    if not isinstance(victim_in, dict):
        raise ApiError(422, "invalid_victim", "victim must be an object.", fields=["victim"])
    victim: dict[str, str] = {}
    for key, pattern in (("name", None), ("phone", PHONE), ("email", EMAIL)):
        value = victim_in.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > 200 or not plain_text(value, multiline=False) or (
                pattern and not pattern.match(value.strip())):
            raise ApiError(422, f"invalid_{key}", f"victim.{key} is not valid.", fields=[f"victim.{key}"])
        victim[key] = value.strip()
    preferred = victim_in.get("preferred_contact")
    if preferred in (None, ""):
        preferred = "sms" if "phone" in victim else "email" if "email" in victim else None
    if preferred not in ("sms", "email", "phone"):
        raise ApiError(422, "invalid_preferred_contact", "victim.preferred_contact must be sms, email or phone "
                                                         "(and a phone number or email is needed).",
                       fields=["victim.preferred_contact"])
    needed = "email" if preferred == "email" else "phone"
    if needed not in victim:
        raise ApiError(422, "missing_contact", f"victim.preferred_contact is {preferred} but no victim.{needed} "
                                               "was given.", fields=[f"victim.{needed}"])
    victim["preferred_contact"] = preferred
    language = victim_in.get("language") or "en"
    if not isinstance(language, str) or not LANGUAGE.match(language):
        raise ApiError(422, "invalid_language", "victim.language must be a language tag such as en or cy.",
                       fields=["victim.language"])
    victim["language"] = language
    return NewIncident(
        cad_ref=cad_ref, grade=grade, category=_text(body.get("category"), "category", 64, multiline=False),
        reported_at=reported_at, summary=_text(body.get("summary"), "summary", 2000), victim=victim,
        vulnerability=_bool(body.get("vulnerability"), "vulnerability", False),
        high_harm=_bool(body.get("high_harm"), "high_harm", False))


def parse_investigation(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    suspect = body.get("suspect")
    if not isinstance(suspect, dict):
        raise ApiError(422, "invalid_suspect", "suspect must be an object with identified and details.",
                       fields=["suspect"])
    safeguarding = body.get("safeguarding")
    if not isinstance(safeguarding, dict):
        raise ApiError(422, "invalid_safeguarding", "safeguarding must be an object with risk, referrals and "
                                                    "advice_given.", fields=["safeguarding"])
    risk = safeguarding.get("risk")
    if risk not in ("standard", "medium", "high"):
        raise ApiError(422, "invalid_risk", "safeguarding.risk must be standard, medium or high.",
                       fields=["safeguarding.risk"])
    witnesses = body.get("witnesses")
    if witnesses is not None and (not isinstance(witnesses, list) or len(witnesses) > 50):
        raise ApiError(422, "invalid_list", "witnesses must be a list.", fields=["witnesses"])
    return {
        "summary": _text(body.get("summary"), "summary", MAX_TEXT, required=True),
        "offence": _text(body.get("offence"), "offence", 200, required=True, multiline=False),
        "suspect": {"identified": _bool(suspect.get("identified"), "suspect.identified"),
                    "details": _text(suspect.get("details"), "suspect.details", MAX_TEXT)},
        "witnesses": [_free(w, f"witnesses[{i}]") for i, w in enumerate(witnesses or [])],
        "lines_of_enquiry": _texts(body.get("lines_of_enquiry"), "lines_of_enquiry"),
        "safeguarding": {"risk": risk, "referrals": _texts(safeguarding.get("referrals"), "safeguarding.referrals"),
                         "advice_given": _bool(safeguarding.get("advice_given"), "safeguarding.advice_given")},
    }


@dataclass(frozen=True)
class Review:
    outcome: str
    plan: str
    reason: Optional[str]


def parse_review(body: Any) -> Review:
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    outcome = body.get("outcome")
    if outcome not in OUTCOMES:
        raise ApiError(422, "invalid_outcome", "outcome must be " + ", ".join(OUTCOMES) + ".", fields=["outcome"])
    plan = _text(body.get("investigation_plan"), "investigation_plan", MAX_TEXT)
    if outcome != "finalised" and not plan:
        raise ApiError(422, "plan_required", f"An investigation_plan is required when the outcome is {outcome}.",
                       fields=["investigation_plan"])
    return Review(outcome, plan, checked_reason(body.get("reason"), required=False))


def parse_code(body: Any) -> int:
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, int) or isinstance(code, bool) or code not in CRIME_OUTCOMES:
        raise ApiError(422, "invalid_code", "code must be a Home Office crime outcome, 1 to 22.", fields=["code"])
    return code


# -- the service ---------------------------------------------------------------------------


class Incidents:
    """Incidents: entry, visibility, the queue and every step (:meth:`apply`)."""

    def __init__(self, settings: Settings, clock: Clock, audit: AuditLog,
                 webhooks: Optional[Webhooks] = None) -> None:
        self.settings = settings
        self.clock = clock
        self.audit = audit
        #: The command-and-control system's events, written with each change (:mod:`.webhooks`).
        self.webhooks = webhooks
        #: Trial mode: each new incident's arm (:mod:`evr.evaluation.trial`).
        self.trial = TrialDesign.from_config(settings.trial)
        #: Told (no arguments) after each committed change of any incident.
        self._listeners: list[Callable[[], None]] = []
        #: The waiting incidents, read once per change (``GET /api/queue``, the board, take).
        self.view = QueueView(self.incident_json, self.target_at)
        self.on_change(self.view.changed)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every committed change (the live queue board)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- reading

    @staticmethod
    def visible(staff: Staff) -> Any:
        """What ``staff`` may see: sergeants and integrations every incident; officers
        the ones allocated or dispatched to them and the queued ones; call handlers
        those they entered; anyone else none."""
        if staff.role in INCIDENT_ALL_ROLES:
            return true()
        if staff.role == "officer":
            return or_(Incident.allocated_to == staff.id, Incident.dispatched_to == staff.id,
                       Incident.state == "queued")
        if staff.role == "call_handler":
            return Incident.created_by_id == staff.id
        return false()

    async def get(self, db: AsyncSession, staff: Staff, incident_id: str) -> Incident:
        try:
            uuid.UUID(incident_id)
        except ValueError:
            raise not_found("No such incident.") from None
        found = await db.scalar(select(Incident).where(Incident.id == incident_id, self.visible(staff)))
        if found is None:
            raise not_found("No such incident.")
        return found

    async def timeline(self, db: AsyncSession, incident_id: str) -> list[IncidentEvent]:
        return list(await db.scalars(select(IncidentEvent).where(IncidentEvent.incident_id == incident_id)
                                     .order_by(IncidentEvent.id)))

    async def list(self, db: AsyncSession, staff: Staff, state: Optional[str], since: Optional[datetime],
                   until: Optional[datetime]) -> list[Incident]:
        query = select(Incident).where(self.visible(staff))
        if state:
            query = query.where(Incident.state == state)
        if since:
            query = query.where(Incident.reported_at >= since)
        if until:
            query = query.where(Incident.reported_at < until)
        return list(await db.scalars(query.order_by(Incident.reported_at.desc(), Incident.id).limit(500)))

    async def queue_json(self, db: AsyncSession, staff: Staff) -> str:
        """``{"incidents": [...]}``: the queue as ``staff`` sees it (:mod:`.queueview`)."""
        return await self.view.json(db, staff, self.clock())

    def target_at(self, incident: Incident) -> Optional[datetime]:
        hours = self.settings.grade_targets_hours.get(str(incident.grade))
        return None if hours is None else incident.reported_at + timedelta(hours=hours)

    @staticmethod
    def review_due_at(incident: Incident) -> Optional[datetime]:
        """When the sergeant's review is due: 24 h after the call closed (or, for a
        record submitted while its call was still open, after the submission)."""
        since = incident.call_closed_at or incident.submitted_at
        return None if since is None else since + REVIEW_WITHIN

    async def evidence(self, db: AsyncSession, incident_id: str) -> dict[str, builtins.list[dict[str, Any]]]:
        """The evidence of the incident's consultations: ids and SHA-256."""
        ids = select(Consultation.id).where(Consultation.incident_id == incident_id)
        recordings = await db.scalars(select(Recording).where(Recording.consultation_id.in_(ids))
                                      .order_by(Recording.started_at))
        uploads = await db.scalars(select(Upload).where(Upload.consultation_id.in_(ids),
                                                        Upload.status.in_(("complete", "quarantined")))
                                   .order_by(Upload.created_at))
        statements = await db.scalars(select(Statement).where(Statement.consultation_id.in_(ids))
                                      .order_by(Statement.created_at))
        return {
            "recordings": [{"id": r.id, "consultation_id": r.consultation_id, "participant": r.participant,
                            "status": r.status, "sha256": r.manifest_sha256} for r in recordings],
            "uploads": [{"id": u.id, "consultation_id": u.consultation_id, "exhibit_ref": u.exhibit_ref,
                         "filename": u.filename, "status": u.status, "sha256": u.sha256} for u in uploads],
            "statements": [{"id": s.id, "consultation_id": s.consultation_id, "status": s.status,
                            "sha256": s.sha256} for s in statements],
        }

    # -- as JSON: the one rendering of an incident (HTTP answers, the board, webhooks)

    def incident_json(self, i: Incident, now: datetime, *, victim: bool = False) -> dict[str, Any]:
        """An incident; the victim's details, eligibility and record only where asked
        (one incident, its read audit-logged)."""
        target = self.target_at(i)
        body: dict[str, Any] = {
            "id": i.id, "cad_ref": i.cad_ref, "state": i.state, "arm": i.arm, "grade": i.grade,
            "category": i.category,
            "reported_at": rfc3339(i.reported_at), "summary": i.summary, "vulnerability": i.vulnerability,
            "high_harm": i.high_harm, "created_at": rfc3339(i.created_at), "created_by": i.created_by,
            "created_by_role": i.created_by_role, "allocated_to": i.allocated_name,
            "dispatched_to": i.dispatched_name, "dispatched_at": rfc3339(i.dispatched_at),
            "consultation_id": i.consultation_id, "arrived_at": rfc3339(i.arrived_at),
            "phoned_at": rfc3339(i.phoned_at), "call_closed_at": rfc3339(i.call_closed_at),
            "submitted_at": rfc3339(i.submitted_at), "review_due_at": rfc3339(self.review_due_at(i)),
            "reviewed_at": rfc3339(i.reviewed_at), "review_overdue": i.review_overdue, "review": i.review,
            "crime_outcome": None if i.crime_outcome is None else {
                "code": i.crime_outcome, "positive": i.crime_outcome in POSITIVE_OUTCOMES,
                "at": rfc3339(i.crime_outcome_at)},
            "target_at": rfc3339(target),
            "overdue": target is not None and i.arrived_at is None and now > target,
            "updated_at": rfc3339(i.updated_at),
        }
        if victim:
            body["victim"] = i.victim
            body["eligibility"] = i.eligibility
            body["investigation"] = i.investigation
        return body

    # -- changing: one function applies every step

    async def apply(self, tx: Appender, incident: Incident, step_name: str, who: Actor, *,
                    reason: Optional[str] = None, changes: Optional[dict[str, Any]] = None,
                    details: Optional[dict[str, Any]] = None, kind: Optional[str] = None) -> Incident:
        """Apply a step of :data:`STEPS` to ``incident`` in the caller's transaction:
        409 ``invalid_state`` unless it is in a state the step allows; the new state
        (and ``changes``) written only if the row is still in the state read
        (:class:`Lost` otherwise), a timeline row and the audit entry added."""
        step = STEPS[step_name]
        old = incident.state
        if old not in step.allowed:
            raise invalid_state(old, step.allowed)
        now = self.clock()
        new = step.to or old
        values = {**(changes or {}), "state": new, "updated_at": now}
        result = await tx.db.execute(update(Incident).where(Incident.id == incident.id, Incident.state == old)
                                     .values(**values).execution_options(synchronize_session=False))
        if cast(CursorResult[Any], result).rowcount != 1:
            raise Lost(incident.id)
        for key, value in values.items():
            setattr(incident, key, value)
        kind = kind or step_name.split(":", 1)[0]
        tx.on_commit(self._changed)
        events = events_for(step_name, old, new)
        if self.webhooks is not None and self.webhooks.enabled and events:
            self.webhooks.enqueue(tx, incident.id, self.incident_json(incident, now), events, now)
        tx.db.add(IncidentEvent(incident_id=incident.id, at=now, kind=kind, from_state=old,
                                to_state=new, actor=who.name[:64], role=who.role[:16], reason=reason,
                                details=details or None))
        await tx.db.flush()
        tx.add(who, step.action, f"incident:{incident.id}", consultation_id=incident.consultation_id, reason=reason,
               details={"from": old, "to": new, "cad_ref": incident.cad_ref, **(details or {})})
        log.info("incident %s: %s (%s -> %s) by %s", incident.id, kind, old, new, who.role)
        return incident

    async def change(self, staff: Staff, who: Actor, incident_id: str, step_name: str, **kwargs: Any) -> Incident:
        """Apply a step in a transaction of its own (the incident read inside it)."""
        async with self.audit.transaction() as tx:
            incident = await self.get(tx.db, staff, incident_id)
            return await self.apply(tx, incident, step_name, who, **kwargs)

    async def create(self, staff: Staff, who: Actor, new: NewIncident) -> Incident:
        now = self.clock()
        async with self.audit.transaction() as tx:
            open_one = await tx.db.scalar(select(Incident.id).where(
                Incident.cad_ref == new.cad_ref, Incident.state.not_in(INCIDENT_CLOSED_STATES)))
            if open_one is not None:
                raise ApiError(409, "duplicate_cad_ref", f"An incident of {new.cad_ref} is open already.",
                               fields=["cad_ref"], incident_id=open_one)
            position = 0
            if self.trial.enabled and self.trial.assign == "block":
                position = await tx.db.scalar(select(func.count()).select_from(Incident)
                                              .where(Incident.arm.is_not(None))) or 0
            arm = self.trial.arm(new.cad_ref, position)
            state = "control" if arm == "control" else "triage"
            incident = Incident(
                id=str(uuid.uuid4()), cad_ref=new.cad_ref, state=state, arm=arm, grade=new.grade,
                category=new.category,
                reported_at=new.reported_at, summary=new.summary, victim=new.victim,
                eligibility={k: True for k in ELIGIBILITY}, vulnerability=new.vulnerability,
                high_harm=new.high_harm, created_at=now, created_by=staff.username, created_by_role=staff.role,
                created_by_id=staff.id, updated_at=now)
            tx.db.add(incident)
            tx.on_commit(self._changed)
            tx.db.add(IncidentEvent(incident_id=incident.id, at=now, kind="created", from_state=None,
                                    to_state=state, actor=who.name[:64], role=who.role[:16],
                                    details={"arm": arm} if arm else None))
            await tx.db.flush()
            # Which personal data was collected; never the values (the audit log is never erased).
            tx.add(who, "incident.create", f"incident:{incident.id}",
                   details={"cad_ref": new.cad_ref, "grade": new.grade, "to": state, "arm": arm,
                            "collected": sorted(f"victim.{k}" for k in new.victim)})
        return incident

    async def triage(self, staff: Staff, who: Actor, incident_id: str, body: Any) -> Incident:
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "The body must be a JSON object.")
        decision = body.get("decision")
        if decision not in ("queue", "allocate", "reject"):
            raise ApiError(422, "invalid_decision", "decision must be queue, allocate or reject.",
                           fields=["decision"])
        reason = checked_reason(body.get("reason"), required=decision == "reject")
        async with self.audit.transaction() as tx:
            incident = await self.get(tx.db, staff, incident_id)
            changes: dict[str, Any] = {}
            details: dict[str, Any] = {"decision": decision}
            if decision == "allocate":
                officer = await self._officer(tx.db, body.get("officer"))
                changes = {"allocated_to": officer.id, "allocated_name": officer.username}
                details["officer"] = officer.username
            return await self.apply(tx, incident, decision, who, reason=reason, changes=changes, details=details)

    async def officers(self, db: AsyncSession) -> builtins.list[dict[str, Any]]:
        """Every active officer, whether signed in now (a session unexpired): those
        signed in first, then by name. The sergeant allocates to one signed in."""
        now = self.clock()
        signed_in = set(await db.scalars(select(StaffSession.user_id).where(StaffSession.expires_at > now)))
        users = await db.scalars(select(User).where(User.role == "officer", not_(User.disabled)))
        found = [{"username": u.username, "signed_in": u.id in signed_in} for u in users]
        return sorted(found, key=lambda o: (not o["signed_in"], o["username"]))

    async def _officer(self, db: AsyncSession, name: Any) -> User:
        if not isinstance(name, str) or not name or len(name) > 64 or not plain_text(name, multiline=False):
            raise ApiError(422, "invalid_officer", "officer must name an officer to allocate to.",
                           fields=["officer"])
        user = await db.scalar(select(User).where(User.username == name))
        if user is None or user.disabled or user.role != "officer":
            why = "no such user" if user is None else "disabled" if user.disabled else f"a {user.role}"
            raise ApiError(422, "invalid_officer", f"Cannot allocate to {name!r}: {why}; name an active officer.",
                           fields=["officer"])
        return user

    async def take(self, tx: Appender, staff: Staff, who: Actor) -> Optional[Incident]:
        """Dispatch to ``staff`` their oldest allocated incident, else the oldest queued
        one (the first of their queue), in the caller's transaction; None when there is
        none. The incident is claimed with a conditional UPDATE on the state it was
        read in: a lost race tries the next."""
        for _ in range(50):
            candidates = await self.view.for_staff(tx.db, staff, self.clock())
            if not candidates:
                return None
            incident = await tx.db.get(Incident, candidates[0].id, populate_existing=True)
            try:
                if incident is None or incident.state not in STEPS["take"].allowed:
                    raise Lost(candidates[0].id)
                return await self.apply(tx, incident, "take", who, changes={
                    "dispatched_to": staff.id, "dispatched_name": staff.username,
                    "dispatched_at": self.clock()}, details={"officer": staff.username})
            except Lost:
                self.view.forget()
                continue
        raise ApiError(503, "busy", "The queue is changing too fast; try again.")

    async def joined(self, tx: Appender, consultation: Consultation, who: Actor) -> None:
        """An officer joined a consultation (in the staff socket's transaction): the
        first arrival of an incident's call sets its ``arrived_at``."""
        if not consultation.incident_id:
            return
        incident = await tx.db.get(Incident, consultation.incident_id)
        if incident is None or incident.arrived_at is not None or incident.state not in STEPS["arrived"].allowed:
            return
        arrived = consultation.arrived_at or self.clock()
        await self.apply(tx, incident, "arrived", who, changes={"arrived_at": arrived},
                         details={"consultation_id": consultation.id, "arrived_at": rfc3339(arrived)})

    async def consultation_status(self, consultation_id: str, status: str) -> None:
        """:meth:`evr.consultations.Consultations.on_status` listener: a call of an
        incident closed goes on its timeline (the review is due within 24 h of it)."""
        if status != "closed":
            return
        try:
            async with self.audit.transaction() as tx:
                consultation = await tx.db.get(Consultation, consultation_id)
                if consultation is None or not consultation.incident_id:
                    return
                incident = await tx.db.get(Incident, consultation.incident_id)
                if incident is None or incident.state not in STEPS["call_closed"].allowed:
                    return
                await self.apply(tx, incident, "call_closed", Actor.system(),
                                 changes={"call_closed_at": consultation.closed_at or self.clock()},
                                 details={"consultation_id": consultation_id,
                                          "closed_at": rfc3339(consultation.closed_at)})
        except Exception:  # noqa: BLE001 - the call is closed whatever its timeline says
            log.exception("could not put the closed call on its incident's timeline (consultation=%s)",
                          consultation_id)
