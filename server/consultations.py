"""Consultations and their links: creation, visibility, the victim's token and binding."""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from sqlalchemy import false, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from .auth import Staff, sha256_hex
from .config import Settings
from .db import Consultation, ConsultationStaff, OutboxMessage
from .errors import ApiError, not_found
from .notify import Notifier, compose
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


class Consultations:
    def __init__(self, settings: Settings, clock: Clock, notifier: Notifier) -> None:
        self.settings = settings
        self.clock = clock
        self.notifier = notifier

    async def create(self, db: AsyncSession, staff: Staff, new: NewConsultation, base_url: str
                     ) -> tuple[Consultation, str, Optional[OutboxMessage]]:
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
        await db.flush()
        join_url = f"{base_url.rstrip('/')}/j/{token}"
        message = None
        if new.notify:
            message = await self._deliver(db, consultation, new.notify, join_url)
        await db.commit()
        log.info("consultation created (id=%s cad=%s by=%s)", consultation.id, consultation.cad_ref, staff.username)
        return consultation, join_url, message

    async def _deliver(self, db: AsyncSession, consultation: Consultation, channel: str, url: str) -> OutboxMessage:
        recipient = consultation.victim["phone" if channel == "sms" else "email"]
        text = compose(channel, recipient, url)
        delivery = await self.notifier.send(text)
        message = OutboxMessage(
            consultation_id=consultation.id, channel=channel, recipient=recipient, body=text.body,
            created_at=self.clock(), status=delivery.status, provider=delivery.provider,
            provider_ref=delivery.ref, error=delivery.error,
        )
        db.add(message)
        await db.flush()
        # Never the link or the recipient in the log: the link is the victim's key.
        log.info("link message %s (consultation=%s channel=%s provider=%s ref=%s)",
                 delivery.status, consultation.id, channel, delivery.provider, delivery.ref or "-")
        if delivery.error:
            log.warning("link message failed (consultation=%s): %s", consultation.id, delivery.error)
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
        """``open``, ``closed`` or ``expired`` (a link never opened dies after its TTL)."""
        if consultation.status == "closed":
            return "closed"
        if consultation.bound_at is None and consultation.expires_at <= self.clock():
            return "expired"
        return "open"

    async def bind(self, db: AsyncSession, consultation: Consultation) -> Optional[str]:
        """Bind the link to the browser opening it first; return the cookie's secret,
        or None when another browser bound it first (atomic on every database)."""
        secret = secrets.token_urlsafe(32)
        result = await db.execute(
            update(Consultation)
            .where(Consultation.id == consultation.id, Consultation.binding_hash.is_(None))
            .values(binding_hash=sha256_hex(secret), bound_at=self.clock())
        )
        await db.commit()
        if result.rowcount != 1:
            return None
        log.info("link opened and bound to a browser (consultation=%s)", consultation.id)
        return secret

    @staticmethod
    def binding_ok(consultation: Consultation, cookie: Optional[str]) -> bool:
        return bool(cookie) and consultation.binding_hash == sha256_hex(cookie or "")

    async def joined(self, db: AsyncSession, consultation: Consultation, staff: Staff) -> None:
        """Record that a member of staff joined (and 'arrived' for the first officer)."""
        if await db.get(ConsultationStaff, (consultation.id, staff.id)) is None:
            db.add(ConsultationStaff(consultation_id=consultation.id, user_id=staff.id, joined_at=self.clock()))
        if consultation.arrived_at is None:
            consultation.arrived_at = self.clock()
            log.info("officer arrived (consultation=%s user=%s)", consultation.id, staff.username)
        await db.commit()

    async def outbox(self, db: AsyncSession, staff: Staff, consultation_id: Optional[str]) -> list[OutboxMessage]:
        query = select(OutboxMessage).join(Consultation, Consultation.id == OutboxMessage.consultation_id)
        query = query.where(self.visible(staff))
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


def message_json(m: OutboxMessage) -> dict[str, Any]:
    return {
        "id": m.id, "consultation_id": m.consultation_id, "channel": m.channel, "recipient": m.recipient,
        "body": m.body, "created_at": rfc3339(m.created_at), "status": m.status, "provider": m.provider,
        "error": m.error,
    }
