"""In-call chat: messages kept hash-chained as they are sent, sealed at close.

Chat is for what a call garbles: the spelling of a name, an address, a crime
reference. Each message is a row of ``chat_messages`` (``seq`` from 0 per
consultation) carrying the hash of the one before and its own, chained exactly as a
recording's manifest entries are (:func:`evr.recording.manifest.chain`). One writer
per consultation (an :class:`asyncio.Lock` each), and the primary key
``(consultation_id, seq)`` turns a race between processes into a retry, never a
fork. A closed consultation takes no more.

When the consultation closes the transcript is sealed into the evidence store
(:mod:`evr.transcripts`: signed like a recording manifest) and registered as an
evidence item of kind ``chat``, so retention reviews, holds and disposes of it with
the consultation's other items; disposal also deletes the rows
(:mod:`evr.retention.disposal`). A consultation without a message seals nothing (no
empty transcript, no item). The seal runs as a task this service owns, never holding
up the close; one that failed or was cut short by a stop is done at the next start
(:meth:`Chat.recover`).

Chat text is personal data and evidence: it is never logged, and an error whose
message could carry it (a database error lists its statement's parameters) is
logged by its type alone. Staff reading a transcript is audit-logged
(``chat.view``, ``chat.export``); the seal is (``chat.seal``).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import links, transcripts
from .audit import Actor, AuditLog
from .db import ChatMessage, Consultation, EvidenceItem
from .errors import ApiError, checked_reason
from .evidence import EvidenceStore
from .http import AUDIT, CHAT, CONSULTATIONS, DB, SIGNING_KEY, STORE, actor, current_staff
from .integrity import GENESIS
from .keys import fingerprint, public_pem
from .recording.manifest import chain, keep
from .tasks import TaskSet
from .text import typed_text
from .timeutil import Clock, rfc3339

if TYPE_CHECKING:
    from .consultations import Consultations, Status

log = logging.getLogger(__name__)

#: The longest message, in characters (the contract's limit).
MAX_CHARS = 2000
#: Inserts tried before a post gives up (each retry after another writer took the seq).
POST_ATTEMPTS = 5


@dataclass(frozen=True)
class Sender:
    """Who sends a message: the role and name shown to everyone, and who they are to
    the audit log (a member of staff's user id, or a guest's id)."""

    role: str
    name: Optional[str]
    actor: Actor
    user_id: Optional[int] = None
    guest_id: Optional[str] = None


class ChatError(ValueError):
    """A message refused: ``code`` is the socket error's code (``chat_too_long``,
    ``chat_empty``, ``bad_chat``, ``closed``, ``not_found``, ``chat_failed``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def clean(text: Any) -> str:
    """The message as kept: typed text (:func:`evr.text.typed_text`), stripped; refused
    when it is not a string, longer than :data:`MAX_CHARS` or empty."""
    if not isinstance(text, str):
        raise ChatError("bad_chat", "A chat message is text.")
    if len(text) > MAX_CHARS:
        raise ChatError("chat_too_long", f"A chat message is at most {MAX_CHARS} characters.")
    cleaned = typed_text(text).strip()
    if not cleaned:
        raise ChatError("chat_empty", "The message is empty.")
    return cleaned


def _entry(row: ChatMessage) -> dict[str, Any]:
    """A message as chained (before its place in the chain is added)."""
    return {"id": row.id, "at": rfc3339(row.at), "from": {"role": row.sender_role, "name": row.sender_name},
            "user_id": row.sender_user_id, "guest_id": row.guest_id, "text": row.text}


def message_json(row: ChatMessage) -> dict[str, Any]:
    """A message as the transcript APIs give it (the socket's, without ``type``)."""
    return {"id": row.id, "from": {"role": row.sender_role, "name": row.sender_name}, "text": row.text,
            "at": rfc3339(row.at)}


def _whole_milliseconds(value: datetime) -> datetime:
    """Times are chained as RFC 3339 with milliseconds: keep no more than is hashed."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


async def _rows(db: AsyncSession, consultation_id: str) -> list[ChatMessage]:
    query = select(ChatMessage).where(ChatMessage.consultation_id == consultation_id)
    return list(await db.scalars(query.order_by(ChatMessage.seq)))


class Chat:
    """The chat of every consultation: posting, reading, sealing at close."""

    def __init__(self, clock: Clock, db: async_sessionmaker[AsyncSession], store: EvidenceStore,
                 key: Ed25519PrivateKey, audit: AuditLog, consultations: Optional["Consultations"] = None) -> None:
        self.clock = clock
        self.db = db
        self.store = store
        self.key = key
        self.audit = audit
        self.consultations = consultations
        self._locks: dict[str, asyncio.Lock] = {}
        self.tasks = TaskSet("chat")

    def _lock(self, consultation_id: str) -> asyncio.Lock:
        return self._locks.setdefault(consultation_id, asyncio.Lock())

    def _closed(self, consultation: Consultation) -> bool:
        status = self.consultations.status(consultation) if self.consultations else consultation.status
        return status == "closed" or consultation.status == "closed"

    # -- the call ------------------------------------------------------------------

    async def post(self, consultation_id: str, sender: Sender, text: Any) -> dict[str, Any]:
        """Keep a message (cleaned; :class:`ChatError` when refused) chained to the one
        before; return the socket message to send everyone, once it is committed."""
        cleaned = clean(text)
        async with self._lock(consultation_id):
            for _ in range(POST_ATTEMPTS):
                try:
                    return await self._insert(consultation_id, sender, cleaned)
                except IntegrityError:  # another process took this seq a moment ago: chain onto its message
                    log.info("chat (consultation=%s): another writer took the next place; again", consultation_id)
                except SQLAlchemyError as exc:  # its text would name the message's parameters: the type alone
                    log.error("chat (consultation=%s): the message could not be kept (%s)",
                              consultation_id, type(exc).__name__)
                    raise ChatError("chat_failed", "The message could not be kept; send it again.") from None
        raise ChatError("chat_failed", "The message could not be kept; send it again.")

    async def _insert(self, consultation_id: str, sender: Sender, text: str) -> dict[str, Any]:
        async with self.db() as db:
            consultation = await db.get(Consultation, consultation_id)
            if consultation is None:
                raise ChatError("not_found", "No such consultation.")
            if self._closed(consultation):
                raise ChatError("closed", "The consultation is closed: its chat has ended.")
            last = await db.scalar(select(ChatMessage).where(ChatMessage.consultation_id == consultation_id)
                                   .order_by(ChatMessage.seq.desc()).limit(1))
            seq, prev = (last.seq + 1, last.hash) if last is not None else (0, GENESIS)
            row = ChatMessage(consultation_id=consultation_id, seq=seq, id=str(uuid.uuid4()),
                              at=_whole_milliseconds(self.clock()), sender_role=sender.role[:32],
                              sender_name=sender.name[:200] if sender.name else None, sender_user_id=sender.user_id,
                              guest_id=sender.guest_id, text=text, prev_hash=prev, hash="")
            row.hash = chain(_entry(row), seq, prev)["hash"]
            db.add(row)
            await db.commit()
            log.info("chat message %d kept (consultation=%s from=%s)", seq, consultation_id, sender.role)
            return {"type": "chat", **message_json(row)}

    async def transcript(self, consultation_id: str) -> list[dict[str, Any]]:
        """Every message so far, in order (the socket's shape without ``type``)."""
        async with self.db() as db:
            return [message_json(row) for row in await _rows(db, consultation_id)]

    # -- sealing -----------------------------------------------------------------

    async def consultation_status(self, consultation_id: str, status: "Status") -> None:
        """:meth:`evr.consultations.Consultations.on_status`: a close starts the seal,
        in a task of its own (the close never waits for it)."""
        if status == "closed":
            self.tasks.spawn(self._seal_logged(consultation_id), f"seal the chat of {consultation_id}")

    async def _seal_logged(self, consultation_id: str) -> None:
        try:
            await self.seal(consultation_id)
        except Exception as exc:  # noqa: BLE001 - retried at the next start; the type alone (see above)
            log.error("chat of consultation %s: sealing failed (%s); tried again at the next start",
                      consultation_id, type(exc).__name__)

    async def seal(self, consultation_id: str) -> Optional[str]:
        """Seal a closed consultation's chat: sign and store the transcript, then add
        its evidence item and the ``chat.seal`` entry in one transaction. Returns the
        item's id, or None when there is nothing to seal (no message; not closed).
        Idempotent: a sealed chat is left as it is, and a seal cut short between the
        store and the database is finished with what it stored."""
        iid = transcripts.item_id(consultation_id)
        async with self._lock(consultation_id):
            async with self.db() as db:
                consultation = await db.get(Consultation, consultation_id)
                if consultation is None or consultation.status != "closed":
                    return None
                if await db.get(EvidenceItem, iid) is not None:
                    return iid
                rows = await _rows(db, consultation_id)
            if not rows:
                return None
            entries = self._entries(consultation_id, rows)
            body = transcripts.build({"id": consultation.id, "cad_ref": consultation.cad_ref,
                                      "closed_at": rfc3339(consultation.closed_at)},
                                     entries, fingerprint(self.key.public_key()))
            body = await self._keep(transcripts.prefix(consultation_id), body, entries[-1]["hash"])
            sha256 = hashlib.sha256(body).hexdigest()
            async with self.audit.transaction() as tx:
                if await tx.db.get(EvidenceItem, iid) is not None:  # another process sealed it meanwhile
                    return iid
                tx.db.add(EvidenceItem(id=iid, kind="chat", consultation_id=consultation_id,
                                       prefix=transcripts.prefix(consultation_id), created_at=self.clock(),
                                       sha256=sha256, size=len(body)))
                tx.add(Actor.system(), "chat.seal", f"chat:{iid}", consultation_id=consultation_id,
                       details={"messages": len(entries), "head": entries[-1]["hash"], "transcript_sha256": sha256})
        log.info("chat of consultation %s sealed (%d message(s))", consultation_id, len(entries))
        return iid

    @staticmethod
    def _entries(consultation_id: str, rows: list[ChatMessage]) -> list[dict[str, Any]]:
        """The chain from the rows, checked against the hashes kept as each was sent:
        a row changed since refuses the seal (:class:`transcripts.Problem`)."""
        entries, prev = [], GENESIS
        for index, row in enumerate(rows):
            linked = chain(_entry(row), index, prev)
            if row.seq != index or row.prev_hash != prev or row.hash != linked["hash"]:
                log.error("chat of consultation %s: message %d does not match the hash kept when it was sent",
                          consultation_id, index)
                raise transcripts.Problem(f"chat message {index} was altered after it was sent")
            entries.append(linked)
            prev = linked["hash"]
        return entries

    async def _keep(self, base: str, body: bytes, head: str) -> bytes:
        """Store the transcript and its signature; the bytes kept (those a seal cut
        short stored already, when they hold the same chain: the store never overwrites)."""
        return await keep(self.store, self.key, base, body, head, transcripts.CHAT)

    async def recover(self) -> int:
        """At start: seal every closed consultation whose chat is not sealed (a seal
        that failed, or a stop between the close and the seal). How many were sealed."""
        unsealed = (select(ChatMessage.consultation_id).distinct()
                    .join(Consultation, Consultation.id == ChatMessage.consultation_id)
                    .where(Consultation.status == "closed",
                           ~exists().where(EvidenceItem.consultation_id == ChatMessage.consultation_id,
                                           EvidenceItem.kind == "chat")))
        async with self.db() as db:
            pending = list(await db.scalars(unsealed))
        sealed = 0
        for consultation_id in pending:
            try:
                sealed += await self.seal(consultation_id) is not None
            except Exception as exc:  # noqa: BLE001 - the others are still sealed; this one next time
                log.error("chat of consultation %s: sealing failed (%s)", consultation_id, type(exc).__name__)
        return sealed

    async def close(self) -> None:
        """Let seals under way finish (a few writes each), then stop."""
        await self.tasks.wait(timeout=10)
        await self.tasks.close()


# -- HTTP ------------------------------------------------------------------------------


async def staff_chat(request: web.Request) -> web.Response:
    """``GET /api/consultations/{id}/chat``: staff who may see the consultation;
    every read audit-logged (``chat.view``)."""
    staff = current_staff(request)
    async with request.app[DB]() as db:
        consultation = await request.app[CONSULTATIONS].get(db, staff, request.match_info["id"])
    messages = await request.app[CHAT].transcript(consultation.id)
    await request.app[AUDIT].record(actor(request, staff), "chat.view", f"chat:{transcripts.item_id(consultation.id)}",
                                    consultation_id=consultation.id, details={"messages": len(messages)})
    return web.json_response({"messages": messages})


async def link_chat(request: web.Request) -> web.Response:
    """``GET /j/{token}/chat``: the chat so far, for the browser holding the link (the
    victim's or a guest's)."""
    holder = await links.claimed_link(request)
    return web.json_response({"messages": await request.app[CHAT].transcript(holder.consultation.id)})


async def transcript_download(request: web.Request) -> web.Response:
    """``GET /api/consultations/{id}/chat/transcript?reason=``: the sealed transcript as
    a zip (transcript.json, transcript.sig, the public key and how to verify, what
    ``evr chat verify`` checks); a reason is required and kept (``chat.export``)."""
    staff = current_staff(request)
    reason = checked_reason(request.query.get("reason"))
    async with request.app[DB]() as db:
        consultation = await request.app[CONSULTATIONS].get(db, staff, request.match_info["id"])
    store, key = request.app[STORE], request.app[SIGNING_KEY]
    base = transcripts.prefix(consultation.id)
    if base + transcripts.TRANSCRIPT not in await store.keys(base):
        raise ApiError(404, "no_transcript", "No sealed chat transcript: the consultation is still open, had no "
                                             "chat, or its transcript was disposed of.")
    body = await store.read_bytes(base + transcripts.TRANSCRIPT)
    signature = await store.read_bytes(base + transcripts.SIGNATURE)
    entry = await request.app[AUDIT].record(
        actor(request, staff), "chat.export", f"chat:{transcripts.item_id(consultation.id)}",
        consultation_id=consultation.id, reason=reason,
        details={"transcript_sha256": hashlib.sha256(body).hexdigest()})
    note = transcripts.HOW_TO_VERIFY.format(
        consultation=consultation.id, cad_ref=consultation.cad_ref, downloaded_at=rfc3339(entry.at),
        by=f"{staff.username} ({staff.role})", reason=reason, fingerprint=fingerprint(key.public_key()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(transcripts.TRANSCRIPT, body)
        archive.writestr(transcripts.SIGNATURE, signature)
        archive.writestr(transcripts.PUBLIC_KEY, public_pem(key.public_key()))
        archive.writestr(transcripts.README, note)
    return web.Response(body=buffer.getvalue(), content_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="chat-{consultation.id}.zip"'})


def setup(app: web.Application) -> None:
    app.add_routes([
        web.get("/api/consultations/{id}/chat", staff_chat),
        web.get("/api/consultations/{id}/chat/transcript", transcript_download),
        web.get("/j/{token}/chat", link_chat),
    ])
