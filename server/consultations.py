"""Consultations and their links: creation, visibility, the victim's token and binding,
and the lifecycle (``waiting`` → ``live`` ⇄ ``paused`` → ``closed``).

:class:`Consultations` is the single writer of a consultation's status, as aiortc's
``RTCPeerConnection.__updateConnectionState`` is of its connection state: the room
reports who is connected and whether the call is paused (:class:`Presence`), staff
close it, and :meth:`Consultations.update` computes the status from those inputs
(:func:`next_status`, the one rule), writes it with its audit entry in one
transaction, and tells its listeners (the hub) once. Nothing else writes it.

Every other change here is made in the caller's transaction, never committed on its
own: the HTTP handlers run it inside :meth:`evr.audit.AuditLog.transaction`, so a
consultation created, a link claimed or an officer's arrival and its audit entry
commit together or not at all."""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable, Literal, Optional, cast

from sqlalchemy import CursorResult, false, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from .audit import Actor, AuditLog
from .auth import Staff, sha256_hex
from .config import Settings
from .db import Consultation, ConsultationStaff, OutboxMessage
from .errors import ApiError, not_found
from .notify import Delivery, LinkMessage, Notifier, compose
from .timeutil import Clock, rfc3339

log = logging.getLogger(__name__)

ELIGIBILITY = ("adult_or_carer_present", "offender_absent", "safe_location", "consent")
CAD_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/_.-]{0,63}$")
PHONE = re.compile(r"^\+?[0-9 ()-]{7,20}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{2,}$")
#: 32 random bytes = 256 bits in the link token.
TOKEN_BYTES = 32

Status = Literal["waiting", "live", "paused", "closed"]
#: What the link of a consultation is: usable, closed by police, or never claimed in time.
LinkState = Literal["open", "closed", "expired"]
#: Told ``(consultation_id, status)`` after every change of status has been committed.
StatusListener = Callable[[str, Status], Awaitable[None]]


@dataclass(frozen=True)
class Presence:
    """What the live room knows: whether the victim and any member of staff are
    connected now, and whether the call is paused."""

    victim_on: bool = False
    staff_on: bool = False
    paused: bool = False


def next_status(current: Status, presence: Optional[Presence] = None, *, close: bool = False) -> Status:
    """The lifecycle's one rule. ``closed`` is final (police closed it, or ``close``).
    Otherwise paused while paused; ``live`` from when the victim and staff are first
    connected together, and it stays ``live`` when someone drops (a call interrupted
    is still under way); ``waiting`` before that."""
    if current == "closed" or close:
        return "closed"
    if presence is None:
        return current
    if presence.paused:
        return "paused"
    if current in ("live", "paused") or (presence.victim_on and presence.staff_on):
        return "live"
    return "waiting"


@dataclass(frozen=True)
class NewConsultation:
    cad_ref: str
    victim: dict[str, str]
    eligibility: dict[str, bool]
    notify: Optional[str]  # "sms", "email" or None


def parse_new(body: Any) -> NewConsultation:
    """Validate a create request; 422 names every failing field."""
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
        raise ApiError(
            422, "not_eligible",
            "Not eligible for a video response: " + ", ".join(failing) + " must be true.",
            fields=failing,
        )
    victim_in = body.get("victim") or {}
    if not isinstance(victim_in, dict):
        raise ApiError(422, "invalid_victim", "victim must be an object.", fields=["victim"])
    victim, notify = parse_contact(victim_in, body.get("notify"), ("name", "phone", "email"), "victim.")
    return NewConsultation(cad_ref, victim, {k: True for k in ELIGIBILITY}, notify)


#: How a link's message goes, and the contact it needs.
CHANNELS = {"sms": "phone", "email": "email"}
_CONTACT_PATTERNS = {"name": None, "phone": PHONE, "email": EMAIL}


def parse_contact(source: dict[str, Any], notify: Any, keys: tuple[str, ...],
                  where: str = "") -> tuple[dict[str, str], Optional[str]]:
    """A link's recipient (the victim, a guest): the ``keys`` of ``source`` given
    (name, phone, e-mail; 422 naming ``where`` + the field when not valid) and how the
    link goes (``notify``: sms or email, by default whichever contact was given, the
    phone first; 422 when its contact is missing)."""
    contact: dict[str, str] = {}
    for key in keys:
        value, pattern = source.get(key), _CONTACT_PATTERNS[key]
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > 200 or (pattern and not pattern.match(value.strip())):
            raise ApiError(422, f"invalid_{key}", f"{where}{key} is not valid.", fields=[f"{where}{key}"])
        contact[key] = value.strip()
    if notify is None:
        notify = next((channel for channel, key in CHANNELS.items() if key in contact), None)
    elif not isinstance(notify, str) or notify not in CHANNELS:
        raise ApiError(422, "invalid_notify", "notify must be sms or email.", fields=["notify"])
    elif CHANNELS[notify] not in contact:
        raise ApiError(422, "missing_contact", f"notify is {notify} but no {where}{CHANNELS[notify]} was given.",
                       fields=[f"{where}{CHANNELS[notify]}"])
    return contact, notify


@dataclass
class Created:
    """A new consultation, as :meth:`Consultations.create` leaves it in the caller's
    transaction. ``join_url`` and ``link`` carry the raw token: they live in memory
    only, for the notifier and the one answer to the officer who created it."""

    consultation: Consultation
    join_url: str
    link: Optional[LinkMessage]
    message: Optional[OutboxMessage]


class Consultations:
    """The consultations: their creation, visibility and links, and the one writer
    of their status (:meth:`update`)."""

    def __init__(self, settings: Settings, clock: Clock, notifier: Notifier, audit: AuditLog) -> None:
        self.settings = settings
        self.clock = clock
        self.notifier = notifier
        self.audit = audit
        #: The status of every consultation with a live room, as last written here.
        self._status: dict[str, Status] = {}
        #: One update at a time per consultation: each computes from the last one's result.
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[StatusListener] = []

    async def create(self, db: AsyncSession, staff: Staff, new: NewConsultation, base_url: str) -> Created:
        """Add the consultation and its outbox message (``pending``, the link redacted)
        to ``db``'s transaction; the caller commits them with their audit entry, then
        calls :meth:`deliver` (no network call while the transaction is open)."""
        now = self.clock()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        consultation = Consultation(
            id=str(uuid.uuid4()),
            cad_ref=new.cad_ref,
            status="waiting",
            created_by=staff.id,
            created_at=now,
            victim=new.victim,
            eligibility=new.eligibility,
            token_hash=sha256_hex(token),
            expires_at=now + timedelta(hours=self.settings.link_ttl_hours),
        )
        db.add(consultation)
        join_url = f"{base_url.rstrip('/')}/j/{token}"
        link, message = self.link_message(db, consultation.id, new.notify, new.victim, join_url)
        await db.flush()
        log.info("consultation created (id=%s cad=%s by=%s)", consultation.id, consultation.cad_ref, staff.username)
        return Created(consultation, join_url, link, message)

    def link_message(self, db: AsyncSession, consultation_id: str, notify: Optional[str], contact: dict[str, str],
                     join_url: str) -> tuple[Optional[LinkMessage], Optional[OutboxMessage]]:
        """The message taking a link (the victim's, a guest's) by ``notify`` (sms,
        email or None) to ``contact``'s phone or e-mail, added to ``db``'s transaction
        as ``pending`` with the link redacted; :meth:`deliver` sends it after the commit."""
        if not notify:
            return None, None
        recipient = contact["phone" if notify == "sms" else "email"]
        link = compose(notify, recipient, join_url)
        message = OutboxMessage(
            consultation_id=consultation_id, channel=link.channel, recipient=recipient, body=link.kept,
            created_at=self.clock(), status="pending", provider=self.notifier.name,
        )
        db.add(message)
        return link, message

    async def deliver(self, db: AsyncSession, message: OutboxMessage, link: LinkMessage) -> OutboxMessage:
        """Hand the message to the notifier and keep how it went on its outbox row
        (``message`` is updated in place and returned)."""
        try:
            delivery = await self.notifier.send(link)
        except Exception as exc:  # noqa: BLE001 - the consultation exists: its creator must still get the link
            log.exception("notifier %s failed (consultation=%s)", self.notifier.name, message.consultation_id)
            delivery = Delivery("failed", self.notifier.name, error=f"notifier error: {type(exc).__name__}")
        try:
            await db.execute(
                update(OutboxMessage).where(OutboxMessage.id == message.id).values(
                    status=delivery.status, provider=delivery.provider, provider_ref=delivery.ref,
                    error=delivery.error)
            )
            await db.commit()
        except Exception:  # noqa: BLE001 - the row stays "pending"; the creator must still get the link
            log.exception("link message %s: its outcome could not be kept (consultation=%s)",
                          delivery.status, message.consultation_id)
        message.status, message.provider = delivery.status, delivery.provider
        message.provider_ref, message.error = delivery.ref, delivery.error
        # Never the link or the recipient in the log: the link is the victim's key. A
        # failure is its status and codes only (evr.notify.gateway_error).
        log.info("link message %s (consultation=%s channel=%s provider=%s ref=%s)",
                 delivery.status, message.consultation_id, message.channel, delivery.provider, delivery.ref or "-")
        if delivery.error:
            log.warning("link message failed (consultation=%s): %s", message.consultation_id, delivery.error)
        return message

    @staticmethod
    def visible(staff: Staff) -> Any:
        """The WHERE clause of what ``staff`` may see: sergeants every consultation,
        officers those they created or joined, anyone else none (admin manages users,
        records staff reach evidence through retention, call handlers have no powers yet)."""
        if staff.sees_all:
            return true()
        if staff.role != "officer":
            return false()
        joined = select(ConsultationStaff.consultation_id).where(ConsultationStaff.user_id == staff.id)
        return or_(Consultation.created_by == staff.id, Consultation.id.in_(joined))

    async def list(self, db: AsyncSession, staff: Staff) -> list[Consultation]:
        rows = await db.scalars(
            select(Consultation).where(self.visible(staff)).order_by(Consultation.created_at.desc()).limit(500)
        )
        return list(rows)

    async def get(self, db: AsyncSession, staff: Staff, consultation_id: str) -> Consultation:
        try:
            uuid.UUID(consultation_id)
        except ValueError:
            raise not_found("No such consultation.") from None
        found = await db.scalar(
            select(Consultation).where(Consultation.id == consultation_id, self.visible(staff))
        )
        if found is None:
            raise not_found("No such consultation.")
        return found

    async def by_token(self, db: AsyncSession, token: str) -> Optional[Consultation]:
        if not token or len(token) > 128:
            return None
        return await db.scalar(select(Consultation).where(Consultation.token_hash == sha256_hex(token)))

    def link_state(self, consultation: Consultation) -> LinkState:
        """``open``, ``closed`` or ``expired`` (a link never claimed dies after its TTL)."""
        if self.status(consultation) == "closed":
            return "closed"
        if consultation.bound_at is None and consultation.expires_at <= self.clock():
            return "expired"
        return "open"

    async def claim(self, db: AsyncSession, consultation: Consultation) -> Optional[str]:
        """Bind the link to the browser claiming it first, in ``db``'s transaction (the
        caller commits it with its audit entry); return the binding cookie's secret, or
        None when it is already bound, closed or expired. One conditional UPDATE, so
        of any number of browsers claiming at once exactly one wins, on every database."""
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        result = await db.execute(
            update(Consultation)
            .where(Consultation.id == consultation.id, Consultation.binding_hash.is_(None),
                   Consultation.status != "closed", Consultation.expires_at > now)
            .values(binding_hash=sha256_hex(secret), bound_at=now)
        )
        if cast(CursorResult[Any], result).rowcount != 1:
            return None
        log.info("link claimed by a browser (consultation=%s)", consultation.id)
        return secret

    @staticmethod
    def binding_ok(consultation: Consultation, cookie: Optional[str]) -> bool:
        return bool(cookie) and consultation.binding_hash is not None and secrets.compare_digest(
            consultation.binding_hash, sha256_hex(cookie or ""))

    async def joined(self, db: AsyncSession, consultation: Consultation, staff: Staff) -> None:
        """Record, in ``db``'s transaction, that a member of staff joined (and 'arrived'
        for the first officer); the caller commits it with its audit entry."""
        if await db.get(ConsultationStaff, (consultation.id, staff.id)) is None:
            db.add(ConsultationStaff(consultation_id=consultation.id, user_id=staff.id, joined_at=self.clock()))
        if consultation.arrived_at is None:
            consultation.arrived_at = self.clock()
            log.info("officer arrived (consultation=%s user=%s)", consultation.id, staff.username)
        await db.flush()

    # -- the lifecycle -------------------------------------------------------

    def on_status(self, listener: StatusListener) -> None:
        """Call ``listener(consultation_id, status)`` after each committed change."""
        self._listeners.append(listener)

    def status(self, consultation: Consultation) -> Status:
        """The consultation's status: this service's own when a room holds it live
        (written here, so never staler than the row), else the row's."""
        return self._status.get(consultation.id) or cast(Status, consultation.status)

    def current(self, consultation_id: str) -> Status:
        """The status of a consultation with a live room (``waiting`` when none)."""
        return self._status.get(consultation_id, "waiting")

    def track(self, consultation: Consultation) -> Status:
        """A room opened for ``consultation``: its status is followed here from now."""
        return self._status.setdefault(consultation.id, cast(Status, consultation.status))

    def forget(self, consultation_id: str) -> None:
        """The consultation's room is gone: its row is the status again."""
        self._status.pop(consultation_id, None)
        self._locks.pop(consultation_id, None)

    async def update(self, consultation_id: str, presence: Optional[Presence] = None, *,
                     who: Optional[Actor] = None, closing: Optional[Staff] = None) -> Optional[Status]:
        """Work the status out from its inputs (:func:`next_status`), write it with its
        audit entry in one transaction when it changed, then tell the listeners once.
        ``presence`` is what the room reports; ``closing`` the member of staff closing
        it. The new status, or None when nothing changed."""
        lock = self._locks.setdefault(consultation_id, asyncio.Lock())
        async with lock:
            cached = self._status.get(consultation_id)
            if cached is not None and next_status(cached, presence, close=closing is not None) == cached:
                return None  # the usual case (someone reconnected): no transaction
            async with self.audit.transaction() as tx:
                consultation = await tx.db.get(Consultation, consultation_id)
                if consultation is None:
                    return None
                old = cast(Status, consultation.status)
                new = next_status(old, presence, close=closing is not None)
                if new == old:
                    if cached is not None:
                        self._status[consultation_id] = old
                    return None
                now = self.clock()
                consultation.status = new
                details: dict[str, Any] = {"from": old, "to": new}
                if new == "closed":
                    consultation.closed_at = now
                    consultation.closed_by = closing.id if closing is not None else None
                actor = who or Actor.system()
                action = "consultation.close" if new == "closed" else "consultation.status"
                tx.add(actor, action, f"consultation:{consultation_id}", consultation_id=consultation_id,
                       details=None if new == "closed" else details)
            if cached is not None or new != "closed":
                self._status[consultation_id] = new
            log.info("consultation %s: %s -> %s (by %s)", consultation_id, old, new, actor.role)
        for listener in self._listeners:
            await listener(consultation_id, new)
        return new

    async def close(self, staff: Staff, who: Actor, consultation_id: str) -> Consultation:
        """Close the consultation (its link dies forever; its room is torn down by the
        listeners) if ``staff`` may see it: 404 otherwise. Closing a closed one changes
        nothing. Returns it as it now is."""
        async with self.audit.db_factory() as db:
            await self.get(db, staff, consultation_id)  # visibility: 404 for the others
        await self.update(consultation_id, closing=staff, who=who)
        async with self.audit.db_factory() as db:
            return await self.get(db, staff, consultation_id)

    async def outbox(self, db: AsyncSession, staff: Staff,
                     consultation_id: Optional[str]) -> builtins.list[OutboxMessage]:
        """Link messages of the consultations ``staff`` created, and no one else's: a
        message names the victim's contact (the link itself is never kept)."""
        query = select(OutboxMessage).join(Consultation, Consultation.id == OutboxMessage.consultation_id)
        query = query.where(Consultation.created_by == staff.id)
        if consultation_id:
            query = query.where(OutboxMessage.consultation_id == consultation_id)
        return list(await db.scalars(query.order_by(OutboxMessage.id.desc()).limit(200)))


def consultation_json(c: Consultation, participants: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    return {
        "id": c.id,
        "cad_ref": c.cad_ref,
        "status": c.status,
        "created_at": rfc3339(c.created_at),
        "arrived_at": rfc3339(c.arrived_at),
        "closed_at": rfc3339(c.closed_at),
        "expires_at": rfc3339(c.expires_at),
        "victim": c.victim,
        "incident_id": c.incident_id,
        "location": c.location,
        "participants": participants or [],
    }


def created_json(created: Created, message: Optional[OutboxMessage]) -> dict[str, Any]:
    """The answer to a new consultation (``POST /api/consultations``, and one started
    from an incident): the only place its link is ever shown."""
    consultation = created.consultation
    return {
        "id": consultation.id,
        "cad_ref": consultation.cad_ref,
        "status": consultation.status,
        "join_url": created.join_url,
        "expires_at": rfc3339(consultation.expires_at),
        "incident_id": consultation.incident_id,
        "message": None if message is None or created.link is None else message_json(message,
                                                                                        body=created.link.body),
    }


def message_json(m: OutboxMessage, body: Optional[str] = None) -> dict[str, Any]:
    """An outbox message; ``body`` replaces the kept (redacted) body in the one answer
    that may show the link (the create response)."""
    return {
        "id": m.id, "consultation_id": m.consultation_id, "channel": m.channel, "recipient": m.recipient,
        "body": body if body is not None else m.body, "created_at": rfc3339(m.created_at), "status": m.status,
        "provider": m.provider, "error": m.error,
    }
