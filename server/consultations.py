"""Consultations and their links: creation, visibility, the victim's token and binding.

Every state change here is made in the caller's transaction, never committed on its
own: the HTTP handlers run it inside :meth:`evr.audit.AuditLog.transaction`, so a
consultation created, a link claimed, an officer's arrival or a close and its audit
entry commit together or not at all."""

from __future__ import annotations

import builtins
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, cast

from sqlalchemy import CursorResult, false, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

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
    victim: dict[str, str] = {}
    for key, pattern in (("name", None), ("phone", PHONE), ("email", EMAIL)):
        value = victim_in.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > 200 or (pattern and not pattern.match(value.strip())):
            raise ApiError(422, f"invalid_{key}", f"victim.{key} is not valid.", fields=[f"victim.{key}"])
        victim[key] = value.strip()
    notify = body.get("notify")
    if notify is None:
        notify = "sms" if "phone" in victim else "email" if "email" in victim else None
    elif notify not in ("sms", "email"):
        raise ApiError(422, "invalid_notify", "notify must be sms or email.", fields=["notify"])
    elif ("phone" if notify == "sms" else "email") not in victim:
        raise ApiError(422, "missing_contact", f"notify is {notify} but no victim contact for it was given.",
                       fields=["victim.phone" if notify == "sms" else "victim.email"])
    return NewConsultation(cad_ref, victim, {k: True for k in ELIGIBILITY}, notify)


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
    def __init__(self, settings: Settings, clock: Clock, notifier: Notifier) -> None:
        self.settings = settings
        self.clock = clock
        self.notifier = notifier

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
        link = message = None
        if new.notify:
            recipient = new.victim["phone" if new.notify == "sms" else "email"]
            link = compose(new.notify, recipient, join_url)
            message = OutboxMessage(
                consultation_id=consultation.id, channel=link.channel, recipient=recipient, body=link.kept,
                created_at=now, status="pending", provider=self.notifier.name,
            )
            db.add(message)
        await db.flush()
        log.info("consultation created (id=%s cad=%s by=%s)", consultation.id, consultation.cad_ref, staff.username)
        return Created(consultation, join_url, link, message)

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

    def link_state(self, consultation: Consultation) -> str:
        """``open``, ``closed`` or ``expired`` (a link never claimed dies after its TTL)."""
        if consultation.status == "closed":
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

    def close(self, consultation: Consultation, staff: Staff) -> bool:
        """Close the consultation (its link dies forever) in the session it was loaded
        in; False when it was closed already. The caller commits with the audit entry."""
        if consultation.status == "closed":
            return False
        consultation.status = "closed"
        consultation.closed_at = self.clock()
        consultation.closed_by = staff.id
        log.info("consultation closed (id=%s by=%s)", consultation.id, staff.username)
        return True

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
        "participants": participants or [],
    }


def message_json(m: OutboxMessage, body: Optional[str] = None) -> dict[str, Any]:
    """An outbox message; ``body`` replaces the kept (redacted) body in the one answer
    that may show the link (the create response)."""
    return {
        "id": m.id, "consultation_id": m.consultation_id, "channel": m.channel, "recipient": m.recipient,
        "body": body if body is not None else m.body, "created_at": rfc3339(m.created_at), "status": m.status,
        "provider": m.provider, "error": m.error,
    }
