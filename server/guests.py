"""Guests of a consultation: a carer, an interpreter, an appropriate adult or a
support worker, each invited by staff with a link of their own.

A guest's link is the victim's kind of link (:mod:`evr.links`): ``/j/{token}``, shown
to copy once or sent by SMS or email through the outbox exactly as the victim's is,
stored only as its SHA-256, bound to the first browser that claims it, dead after
``link_ttl_hours`` if never claimed, and dead forever once police close it. Staff may
end one guest's link (:meth:`Guests.close`) while the call goes on: someone invited
by mistake, or whose part is done, must be able to leave without ending the victim's
call; closing the consultation ends every guest's link with it.

At most :data:`MAX_OPEN_GUESTS` links are open at once per consultation, so with the
victim and staff a call stays within the room's six participants. Every invitation
and every ending is audit-logged in the transaction that makes it, naming the guest's
role and never their name or contact details (the audit log is never erased).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Optional, cast

from aiohttp import web
from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .auth import Staff, sha256_hex
from .config import Settings
from .consultations import TOKEN_BYTES, Consultations, LinkState, message_json, parse_contact
from .db import Consultation, Guest, OutboxMessage
from .errors import ApiError, not_found
from .http import AUDIT, CONSULTATIONS, DB, GUESTS, HUB, actor, base_url, current_staff, read_json
from .notify import LinkMessage
from .roles import CALL_ROLES, GUEST_ROLES
from .text import plain_text, strip_bidi
from .timeutil import Clock, rfc3339

log = logging.getLogger(__name__)

#: Guests whose links are open at once, per consultation (with the victim and a
#: member of staff: the room's six).
MAX_OPEN_GUESTS = 4
#: Longest name and language kept (the columns' sizes).
MAX_NAME = 200
MAX_LANGUAGE = 64

GuestStatus = Literal["invited", "joined", "closed", "expired"]


@dataclass(frozen=True)
class NewGuest:
    role: str
    name: Optional[str]
    language: Optional[str]
    #: ``phone`` and ``email`` as given (checked), for the link's message.
    contact: dict[str, str]
    notify: Optional[str]  # "sms", "email" or None (shown to copy only)


def _text(body: dict[str, Any], key: str, limit: int) -> Optional[str]:
    """An optional single line of text a person wrote, bidi controls taken out."""
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > limit or not plain_text(value, multiline=False):
        raise ApiError(422, f"invalid_{key}", f"{key} must be one line of at most {limit} characters.",
                       fields=[key])
    return strip_bidi(value).strip() or None


def parse_guest(body: Any) -> NewGuest:
    """Validate an invitation; 422 names the failing field."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    role = body.get("role")
    if role not in GUEST_ROLES:
        raise ApiError(422, "invalid_role", "role must be one of " + ", ".join(GUEST_ROLES) + ".", fields=["role"])
    name = _text(body, "name", MAX_NAME)
    language = _text(body, "language", MAX_LANGUAGE)
    contact, notify = parse_contact(body, body.get("notify"), ("phone", "email"))
    return NewGuest(cast(str, role), name, language, contact, notify)


@dataclass
class Invited:
    """A new guest as :meth:`Guests.invite` leaves it in the caller's transaction;
    ``join_url`` and ``link`` carry the raw token, in memory only."""

    guest: Guest
    join_url: str
    link: Optional[LinkMessage]
    message: Optional[OutboxMessage]


class Guests:
    """Guests' links: invitation, resolution, claim, state and ending. Every change is
    made in the caller's transaction (committed with its audit entry)."""

    def __init__(self, settings: Settings, clock: Clock, consultations: Consultations) -> None:
        self.settings = settings
        self.clock = clock
        self.consultations = consultations

    def _open(self) -> Any:
        """The WHERE clause of a guest whose link is open: not ended, and claimed or
        still within its time."""
        return and_(Guest.closed_at.is_(None), or_(Guest.bound_at.is_not(None), Guest.expires_at > self.clock()))

    async def invite(self, db: AsyncSession, consultation: Consultation, staff: Staff, new: NewGuest,
                     base: str) -> Invited:
        """Add the guest (and its outbox message, the link redacted) to ``db``'s
        transaction: 410 for a closed consultation, 409 past :data:`MAX_OPEN_GUESTS`.
        The caller commits it with its audit entry, then delivers the message
        (:meth:`evr.consultations.Consultations.deliver`)."""
        if self.consultations.status(consultation) == "closed":
            raise ApiError(410, "closed", "This consultation is closed.")
        open_guests = await db.scalar(select(func.count()).select_from(Guest).where(
            Guest.consultation_id == consultation.id, self._open()))
        if (open_guests or 0) >= MAX_OPEN_GUESTS:
            raise ApiError(409, "too_many_guests", f"A consultation has at most {MAX_OPEN_GUESTS} guests at once: "
                                                   "end a guest's link first.")
        now = self.clock()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        guest = Guest(
            id=str(uuid.uuid4()), consultation_id=consultation.id, role=new.role, name=new.name,
            language=new.language, token_hash=sha256_hex(token),
            expires_at=now + timedelta(hours=self.settings.link_ttl_hours), created_at=now, created_by=staff.id,
        )
        db.add(guest)
        join_url = f"{base.rstrip('/')}/j/{token}"
        link, message = self.consultations.link_message(db, consultation.id, new.notify, new.contact, join_url)
        await db.flush()
        log.info("guest invited (consultation=%s guest=%s role=%s by=%s)", consultation.id, guest.id, guest.role,
                 staff.username)
        return Invited(guest, join_url, link, message)

    async def list(self, db: AsyncSession, consultation: Consultation) -> list[Guest]:
        return list(await db.scalars(select(Guest).where(Guest.consultation_id == consultation.id)
                                     .order_by(Guest.created_at, Guest.id)))

    async def close(self, db: AsyncSession, consultation: Consultation, guest_id: str,
                    staff: Staff) -> tuple[Guest, bool]:
        """End the guest's link in ``db``'s transaction (404 when it is not this
        consultation's guest): the guest, and whether this ended it (ending an ended
        link changes nothing)."""
        try:
            uuid.UUID(guest_id)
        except ValueError:
            raise not_found("No such guest.") from None
        guest = await db.scalar(select(Guest).where(Guest.id == guest_id, Guest.consultation_id == consultation.id))
        if guest is None:
            raise not_found("No such guest.")
        if guest.closed_at is not None:
            return guest, False
        guest.closed_at, guest.closed_by = self.clock(), staff.id
        await db.flush()
        log.info("guest's link closed (consultation=%s guest=%s by=%s)", consultation.id, guest.id, staff.username)
        return guest, True

    # -- the link -------------------------------------------------------------

    async def by_token(self, db: AsyncSession, token: str) -> Optional[tuple[Guest, Consultation]]:
        if not token or len(token) > 128:
            return None
        row = (await db.execute(select(Guest, Consultation).join(Consultation, Consultation.id == Guest.consultation_id)
                                .where(Guest.token_hash == sha256_hex(token)))).first()
        return None if row is None else (row[0], row[1])

    def link_state(self, guest: Guest, consultation: Consultation) -> LinkState:
        """``closed`` when staff ended it or the consultation is closed; ``expired``
        when never claimed within its time; else ``open``."""
        if guest.closed_at is not None or self.consultations.status(consultation) == "closed":
            return "closed"
        if guest.bound_at is None and guest.expires_at <= self.clock():
            return "expired"
        return "open"

    def status(self, guest: Guest, consultation: Consultation) -> GuestStatus:
        state = self.link_state(guest, consultation)
        if state != "open":
            return state
        return "invited" if guest.bound_at is None else "joined"

    async def claim(self, db: AsyncSession, guest: Guest) -> Optional[str]:
        """Bind the guest's link to the first browser claiming it, as
        :meth:`evr.consultations.Consultations.claim` does the victim's: one
        conditional UPDATE; the binding cookie's secret, or None."""
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        open_consultations = select(Consultation.id).where(Consultation.status != "closed")
        result = await db.execute(
            update(Guest)
            .where(Guest.id == guest.id, Guest.binding_hash.is_(None), Guest.closed_at.is_(None),
                   Guest.expires_at > now, Guest.consultation_id.in_(open_consultations))
            .values(binding_hash=sha256_hex(secret), bound_at=now)
        )
        if cast(CursorResult[Any], result).rowcount != 1:
            return None
        log.info("guest's link claimed by a browser (consultation=%s guest=%s)", guest.consultation_id, guest.id)
        return secret


def guest_json(guest: Guest, status: GuestStatus, consultation: Consultation, connected: bool) -> dict[str, Any]:
    return {
        "id": guest.id, "role": guest.role, "name": guest.name, "language": guest.language, "status": status,
        "connected": connected, "created_at": rfc3339(guest.created_at), "expires_at": rfc3339(guest.expires_at),
        "closed_at": rfc3339(guest.closed_at or (consultation.closed_at if status == "closed" else None)),
    }


# -- the handlers ------------------------------------------------------------------


async def invite(request: web.Request) -> web.Response:
    """``POST /api/consultations/{id}/guests``: 201 with the only copy of the guest's
    link anyone will see; the guest, its outbox message and the audit entry commit
    together, then the message goes out."""
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    new = parse_guest(await read_json(request))
    consultations = request.app[CONSULTATIONS]
    async with request.app[AUDIT].transaction() as tx:
        consultation = await consultations.get(tx.db, staff, request.match_info["id"])
        invited = await request.app[GUESTS].invite(tx.db, consultation, staff, new, base_url(request))
        # The role and what was collected, never the values (the audit log is never erased).
        tx.add(actor(request, staff), "guest.invite", f"guest:{invited.guest.id}", consultation_id=consultation.id,
               details={"role": new.role, "language": new.language, "link_sent_by": new.notify,
                        "collected": sorted([*new.contact, *(["name"] if new.name else [])])})
    message = None
    if invited.message is not None and invited.link is not None:
        async with request.app[DB]() as db:
            message = await consultations.deliver(db, invited.message, invited.link)
    guest = invited.guest
    return web.json_response({
        "id": guest.id, "role": guest.role, "name": guest.name, "language": guest.language,
        "join_url": invited.join_url, "expires_at": rfc3339(guest.expires_at),
        "message": None if message is None or invited.link is None else message_json(message,
                                                                                        body=invited.link.body),
    }, status=201)


async def list_guests(request: web.Request) -> web.Response:
    """``GET /api/consultations/{id}/guests``: every guest invited, with their link's
    status and whether they are in the call now (audit-logged: it names people)."""
    staff = current_staff(request)
    service = request.app[GUESTS]
    async with request.app[DB]() as db:
        consultation = await request.app[CONSULTATIONS].get(db, staff, request.match_info["id"])
        guests = await service.list(db, consultation)
    await request.app[AUDIT].record(actor(request, staff), "guest.list", f"consultation:{consultation.id}",
                                    consultation_id=consultation.id)
    present = (await request.app[HUB].participants([consultation.id]))[consultation.id]
    connected = {p["id"] for p in present if p.get("connected")}
    return web.json_response({"guests": [
        guest_json(g, service.status(g, consultation), consultation, f"guest:{g.id}" in connected) for g in guests]})


async def close(request: web.Request) -> web.Response:
    """``POST /api/consultations/{id}/guests/{gid}/close``: the guest's link answers
    410 from now on and their socket is closed (``closed``, 4000); the call goes on."""
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    async with request.app[AUDIT].transaction() as tx:
        consultation = await request.app[CONSULTATIONS].get(tx.db, staff, request.match_info["id"])
        guest, ended = await request.app[GUESTS].close(tx.db, consultation, request.match_info["gid"], staff)
        if ended:
            tx.add(actor(request, staff), "guest.close", f"guest:{guest.id}", consultation_id=consultation.id,
                   details={"role": guest.role})
    # Every time, not only the first: a socket opened just before the link died goes too.
    await request.app[HUB].remove(consultation.id, f"guest:{guest.id}")
    return web.json_response({"id": guest.id, "status": "closed"})


def setup(app: web.Application) -> None:
    """Staff's invitations, list and endings of guests' links (the links themselves
    are :mod:`evr.links`')."""
    app.add_routes([
        web.post("/api/consultations/{id}/guests", invite),
        web.get("/api/consultations/{id}/guests", list_guests),
        web.post("/api/consultations/{id}/guests/{gid}/close", close),
    ])
