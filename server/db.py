"""Database models and engine (SQLAlchemy 2, async), SQLite or PostgreSQL.

The schema is owned by the Alembic migrations in ``evr/migrations``; ``migrate()``
brings a database to the newest revision and runs at every ``evr serve`` start.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    event,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC, on SQLite and PostgreSQL alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled: Mapped[bool] = mapped_column(default=False)


class StaffSession(Base):
    """A logged-in staff browser. ``id`` is the SHA-256 of the cookie's token."""

    __tablename__ = "staff_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginFailure(Base):
    """Failed (and in-flight) logins per user name, known or not so both behave alike;
    ``locked_until`` set once they reach ``login_max_failures``."""

    __tablename__ = "login_failures"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)


class LoginThrottle(Base):
    """Failed (and in-flight) logins per client address across user names, in a window
    of ``login_lockout_minutes`` from ``window_start`` (migration 0009)."""

    __tablename__ = "login_throttle"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)


class Consultation(Base):
    __tablename__ = "consultations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    cad_ref: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    arrived_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    closed_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"), nullable=True)
    victim: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    eligibility: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: SHA-256 of the link token; the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: SHA-256 of the binding cookie set on the first successful open.
    binding_hash: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    bound_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: The incident it answers, when it was started from one (migration 0011).
    incident_id: Mapped[Optional[str]] = mapped_column(String(36), nullable=True, index=True)
    #: The victim's last shared location ``{"lat", "lon", "accuracy_m", "at"}``
    #: (migration 0016): personal data, disposed of with the consultation.
    location: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)


class ConsultationStaff(Base):
    """Staff who joined a consultation (an officer sees what they created or joined)."""

    __tablename__ = "consultation_staff"

    consultation_id: Mapped[str] = mapped_column(
        ForeignKey("consultations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxMessage(Base):
    """A link message, as sent to the victim (the token is in ``body``; never logged)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    channel: Mapped[str] = mapped_column(String(8))
    recipient: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(32))
    provider_ref: Mapped[Optional[str]] = mapped_column(String(128), nullable=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)


class AuditEntry(Base):
    """One entry of the append-only audit log, hash-chained to the entry before."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: User name, ``victim`` or ``system``.
    actor: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    #: What was done, e.g. ``recording.view``.
    action: Mapped[str] = mapped_column(String(48), index=True)
    #: What it was done to, e.g. ``recording:<id>``.
    object: Mapped[str] = mapped_column(String(128), index=True)
    consultation_id: Mapped[Optional[str]] = mapped_column(String(36), nullable=True, index=True)
    #: The justification given (exports, disclosures, records access...).
    reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    #: The client's network address.
    client: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class EvidenceItem(Base):
    """One item of evidence (a recording, an upload, a statement): what retention,
    review and disposal act on. Every store key of the item starts with ``prefix``."""

    __tablename__ = "evidence_items"

    #: The same id as the recording, upload or statement it stands for.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: The item's defining hash (a recording's manifest, an upload's bytes, a statement's PDF).
    sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)


class Recording(Base):
    """One participant's recording of one consultation: their camera and microphone,
    or (``track`` = ``screen``) a screen they shared."""

    __tablename__ = "recordings"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    #: ``victim``, the staff member's role or the guest's (``interpreter``...);
    #: ``participant_user`` names staff, ``participant_name`` a guest.
    participant: Mapped[str] = mapped_column(String(32))
    #: ``camera`` (audio and video) or ``screen`` (a shared screen, video only).
    track: Mapped[str] = mapped_column(String(16), default="camera")
    participant_name: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    participant_user: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[Optional[str]] = mapped_column(String(512), nullable=True)
    #: recording, complete (closed normally) or terminated (closed on recovery after a crash).
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: Seconds of media (gaps excluded).
    duration_s: Mapped[float] = mapped_column(default=0.0)
    segments: Mapped[int] = mapped_column(Integer, default=0)
    #: Hash of the newest manifest entry (the head of the chain).
    head_hash: Mapped[str] = mapped_column(String(64))
    manifest_sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    #: ``non_evidential`` (31-day class) until staff mark it ``evidential``. A redacted
    #: copy's follows its original's.
    classification: Mapped[str] = mapped_column(String(16), default="non_evidential")
    #: ``original`` (captured in a call) or ``redacted`` (a copy made from
    #: ``source_recording_id``, whose manifest had ``source_manifest_sha256``, by the
    #: operations in ``redaction``; see :mod:`evr.recording.redactions`).
    kind: Mapped[str] = mapped_column(String(16), default="original")
    source_recording_id: Mapped[Optional[str]] = mapped_column(String(36), nullable=True, index=True)
    source_manifest_sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    redaction: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)


class RedactionJob(Base):
    """A request to make a redacted copy of a recording, queued here so that it
    survives a restart, run by one worker at a time (:mod:`evr.recording.redactions`).
    ``status``: queued, running, done, failed or cancelled."""

    __tablename__ = "redaction_jobs"
    __table_args__ = (Index("ix_redaction_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"))
    recording_id: Mapped[str] = mapped_column(ForeignKey("recordings.id"), index=True)
    operations: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    #: Seconds left, as the worker estimates them.
    eta_s: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    #: Why it failed, in a sentence for the officer.
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    result_recording_id: Mapped[Optional[str]] = mapped_column(String(36), nullable=True)
    #: Which worker runs it (host and process), and how many times one started it.
    worker: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: Written by the running worker every few seconds: a job whose worker stopped
    #: writing it is queued again (:meth:`evr.recording.redactions.Jobs.claim`).
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)


class Guest(Base):
    """A guest of a consultation (a carer, an interpreter...) with a link of their own,
    single-device like the victim's: the token and the binding stored hashed."""

    __tablename__ = "guests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    #: ``carer``, ``interpreter``, ``appropriate_adult`` or ``support_worker``.
    role: Mapped[str] = mapped_column(String(32))
    name: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    language: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    binding_hash: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    bound_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    #: When staff ended this guest's link (410 from then on), and who.
    closed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    closed_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"), nullable=True)


class ChatMessage(Base):
    """One in-call chat message, hash-chained to the one before in its consultation
    (``seq`` from 0); sealed into the evidence store with the transcript at close."""

    __tablename__ = "chat_messages"

    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Who sent it: their role (``victim``, ``officer``, ``interpreter``...) and name.
    sender_role: Mapped[str] = mapped_column(String(32))
    sender_name: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    sender_user_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"), nullable=True)
    guest_id: Mapped[Optional[str]] = mapped_column(String(36), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class RecordingEntry(Base):
    """One manifest entry of a recording: a segment, a gap or the end, in order."""

    __tablename__ = "recording_entries"

    recording_id: Mapped[str] = mapped_column(ForeignKey("recordings.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    #: The entry exactly as chained into the manifest (with ``prev`` and ``hash``).
    entry: Mapped[dict[str, Any]] = mapped_column(JSON)


# -- audit checkpoints and retention (migration 0005) --------------------------


class AuditCheckpoint(Base):
    """A signed statement of the audit log's newest entry (its id and hash) at a time:
    a cut tail or a rewritten log no longer matches it."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_id: Mapped[int] = mapped_column(Integer, index=True)
    last_hash: Mapped[str] = mapped_column(String(64))
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    #: Ed25519 signature (hex) of the checkpoint's canonical JSON.
    signature: Mapped[str] = mapped_column(String(128))


class RetentionAssignment(Base):
    """A consultation's retention class, set by an officer or sergeant (with a reason)."""

    __tablename__ = "retention_assignments"

    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), primary_key=True)
    retention_class: Mapped[str] = mapped_column(String(32))
    #: The subject's date of birth (MoPI group 1: retain until they are deemed 100).
    subject_dob: Mapped[Optional[date]] = mapped_column(Date, nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    set_by: Mapped[str] = mapped_column(String(64))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RetentionItem(Base):
    """Each evidence item's place in the retention schedule, precomputed so the due
    list is one index range scan however many items there are."""

    __tablename__ = "retention_items"
    __table_args__ = (
        # The due list: live rows only (disposed ones leave the index), already in order.
        Index("ix_retention_items_live_due", "due_at", "item_id", sqlite_where=text("state != 'disposed'"),
              postgresql_where=text("state != 'disposed'")),
        Index("ix_retention_items_rule_state", "rule", "state"),
    )

    item_id: Mapped[str] = mapped_column(ForeignKey("evidence_items.id"), primary_key=True)
    consultation_id: Mapped[str] = mapped_column(String(36), index=True)
    #: The class applied: ``non_evidential``, ``group1``... or ``unclassified``.
    rule: Mapped[str] = mapped_column(String(32))
    #: When the item is due (None: never, until it is classified), and for what.
    due_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    action: Mapped[str] = mapped_column(String(8))
    #: active, disposing (content being removed), waiting (a store lock has not
    #: expired yet) or disposed.
    state: Mapped[str] = mapped_column(String(12))
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The newest review's decision (retain/dispose), when and the next review it set.
    review_decision: Mapped[Optional[str]] = mapped_column(String(8), nullable=True)
    reviewed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    next_review_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: While disposing or waiting: who decided, on what, and (waiting) until when.
    disposal: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RetentionReview(Base):
    """A review against the National Retention Assessment Criteria."""

    __tablename__ = "retention_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("evidence_items.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    reviewer: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text)
    #: The assessment criteria that applied (names of NRAC questions answered yes).
    criteria: Mapped[list[str]] = mapped_column(JSON, default=list)
    rule: Mapped[str] = mapped_column(String(32))
    next_review_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)


class RetentionHold(Base):
    """A legal hold on an item or a whole consultation: no disposal until released."""

    __tablename__ = "retention_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``item`` or ``consultation``, and its id.
    scope: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(36), index=True)
    reason: Mapped[str] = mapped_column(Text)
    placed_by: Mapped[str] = mapped_column(String(64))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True, index=True)
    released_by: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    release_reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)


class DisposalCertificate(Base):
    """The record kept when an item's content is destroyed: what, its hash, who, when,
    the rule and the decision, signed by the service. Never deleted."""

    __tablename__ = "disposal_certificates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("evidence_items.id"), unique=True)
    consultation_id: Mapped[str] = mapped_column(String(36), index=True)
    disposed_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: The certificate's canonical JSON, as signed.
    document: Mapped[str] = mapped_column(Text)
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class RetentionMeta(Base):
    """Small facts of the schedule, e.g. the fingerprint of the policy it was computed with."""

    __tablename__ = "retention_meta"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# -- evidence uploads (migration 0004) -----------------------------------------


#: An upload's status (see :class:`Upload`).
UploadStatus = Literal["uploading", "complete", "quarantined", "terminated", "purged"]


class Upload(Base):
    """A file sent over tus by the victim or staff. ``uploading`` while bytes arrive
    (resumable), then ``complete`` (an allowed type) or ``quarantined`` (any other
    type: flagged, never served inline); ``terminated`` when its sender cancelled it
    and ``purged`` when left unfinished too long (neither keeps any content)."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    status: Mapped[UploadStatus] = mapped_column(String(16), index=True)
    #: ``victim`` or the member of staff's user name, and their role.
    uploaded_by: Mapped[str] = mapped_column(String(64))
    uploader_role: Mapped[str] = mapped_column(String(16))
    client: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    #: The name as sent (kept as evidence, never used as a path) and its sanitised form.
    original_name: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(255))
    #: The type the sender's device claimed, and the one detected from the content.
    declared_type: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)
    content_type: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Sealed bytes and records of the staging file that ``offset`` accounts for.
    staged_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    staged_records: Mapped[int] = mapped_column(Integer, default=0)
    #: SHA-256 of every byte received, computed while they streamed in.
    sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    exhibit_ref: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: When the last bytes arrived (unfinished uploads are purged by this).
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: A JPEG preview (thumbnail, or a video's first frame) is stored beside the original.
    has_preview: Mapped[bool] = mapped_column(default=False)
    #: Embedded metadata (EXIF, video duration...).
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    quarantine_reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    #: Who uploaded it, by id (migration 0007): the member of staff's user id; None for
    #: the victim (``uploader_role`` ``victim``), who has no account. Decisions use
    #: the role and this id, never ``uploaded_by`` (a display name).
    uploader_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"), nullable=True)
    #: Why an image or video has no preview (too large, unreadable, the worker stopped).
    preview_skipped: Mapped[Optional[str]] = mapped_column(Text, nullable=True)


# -- statements (MG11, migration 0006) -----------------------------------------


class Statement(Base):
    """An MG11 witness statement taken during a consultation. ``draft`` while the
    officer writes it, ``awaiting_signature`` once sent to the victim's page,
    ``sealing`` for the moment of signing, then ``signed`` (final)."""

    __tablename__ = "statements"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    #: The newest version (every version whose content differs is kept).
    version: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Who sent it for signature (the officer the signature is witnessed by), when,
    #: and how they identified the witness.
    sent_by: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    sent_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    identification: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    #: The sealed PDF's SHA-256, once signed.
    sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    signed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)


class StatementVersion(Base):
    """One saved content of a statement (CPIA: every draft that differs is retained)."""

    __tablename__ = "statement_versions"

    statement_id: Mapped[str] = mapped_column(ForeignKey("statements.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_sha256: Mapped[str] = mapped_column(String(64))
    saved_by: Mapped[str] = mapped_column(String(64))
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StatementEvent(Base):
    """A step of a statement: created, saved, sent, change_requested, cancelled, signed."""

    __tablename__ = "statement_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    statement_id: Mapped[str] = mapped_column(ForeignKey("statements.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(24))
    version: Mapped[int] = mapped_column(Integer)
    #: ``victim`` or the member of staff's user name.
    actor: Mapped[str] = mapped_column(String(64))
    #: The victim's words when they ask for a change.
    text: Mapped[Optional[str]] = mapped_column(Text, nullable=True)


class StatementSignature(Base):
    """The signing record: the evidence of how, when and on what the witness signed."""

    __tablename__ = "statement_signatures"

    statement_id: Mapped[str] = mapped_column(ForeignKey("statements.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    #: SHA-256 of the sealed (signed) PDF.
    document_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: SHA-256 of the unsigned document the witness was shown, and of the signature image.
    shown_sha256: Mapped[str] = mapped_column(String(64))
    signature_sha256: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    typed_name: Mapped[str] = mapped_column(String(200))
    pages: Mapped[int] = mapped_column(Integer)
    declaration: Mapped[str] = mapped_column(Text)
    #: The link's browser binding (SHA-256 of the binding cookie), IP and user agent.
    binding_hash: Mapped[str] = mapped_column(String(64))
    client_ip: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[Optional[str]] = mapped_column(String(512), nullable=True)
    officer: Mapped[str] = mapped_column(String(64))
    identification: Mapped[str] = mapped_column(Text)
    #: Who read the statement to the witness, when someone did.
    read_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    #: The whole record as stored beside the PDF (``signing-record.json``).
    record: Mapped[dict[str, Any]] = mapped_column(JSON)


# -- incidents and the EVR queue, API keys (migration 0011) ---------------------

#: Incident states where EVR's part is over: the CAD reference may be entered again.
INCIDENT_CLOSED_STATES = ("rejected", "finalised", "patrol_suspect", "patrol_enquiries")
_OPEN_INCIDENT = "state NOT IN ('rejected', 'finalised', 'patrol_suspect', 'patrol_enquiries')"


class Incident(Base):
    """An incident offered a video response, from the call handler's entry through
    triage, the queue, the call and the sergeant's review (``evr.incidents``)."""

    __tablename__ = "incidents"
    __table_args__ = (
        # One open incident per CAD reference, on both databases.
        Index("uq_incidents_open_cad_ref", "cad_ref", unique=True, sqlite_where=text(_OPEN_INCIDENT),
              postgresql_where=text(_OPEN_INCIDENT)),
        Index("ix_incidents_state_reported", "state", "reported_at"),
        # The performance indicators of a period (evr.evaluation.kpis): every column
        # they read, so a year is read from the index alone, not 100,000 table rows.
        Index("ix_incidents_kpis", "reported_at", "state", "grade", "arrived_at", "submitted_at", "reviewed_at",
              "review_overdue", "crime_outcome", "dispatched_to", "arm", "category"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    cad_ref: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(24))
    grade: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(64))
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    summary: Mapped[str] = mapped_column(Text)
    victim: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    eligibility: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    vulnerability: Mapped[bool] = mapped_column(Boolean, default=False)
    high_harm: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Who entered it: a user's or an API key's name and role; the id is the user's,
    #: or minus the key's (so the two never meet).
    created_by: Mapped[str] = mapped_column(String(64))
    created_by_role: Mapped[str] = mapped_column(String(16))
    created_by_id: Mapped[int] = mapped_column(Integer, index=True)
    allocated_to: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    allocated_name: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    dispatched_to: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    dispatched_name: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    dispatched_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: The newest consultation of it (each carries ``incident_id``).
    consultation_id: Mapped[Optional[str]] = mapped_column(String(36), nullable=True)
    arrived_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: Trial mode's arm: "treatment" (offered EVR), "control" (normal dispatch, kept for
    #: comparison) or None (no trial).
    arm: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    #: When its newest call closed: the sergeant's review is due within 24 h of it.
    call_closed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    phoned_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    submitted_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: The investigation record as submitted, with the evidence it lists.
    investigation: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)
    reviewed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    review_overdue: Mapped[Optional[bool]] = mapped_column(Boolean, nullable=True)
    #: The newest review: outcome, investigation plan, reviewer.
    review: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)
    crime_outcome: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    crime_outcome_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IncidentEvent(Base):
    """The incident's timeline: every state change (``from_state`` → ``to_state``) and
    every other step (phoned, arrived, crime outcome), with time, who and why."""

    __tablename__ = "incident_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(24))
    from_state: Mapped[Optional[str]] = mapped_column(String(24), nullable=True)
    to_state: Mapped[Optional[str]] = mapped_column(String(24), nullable=True)
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    details: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)


class WebhookDelivery(Base):
    """The webhook outbox (``evr.incidents.webhooks``): one row per event for the
    command-and-control system, written in the transaction of the change it reports,
    its body fixed then (the exact bytes signed and sent), kept once delivered."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_pending", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    #: Why the last attempt failed: the receiver's status or the kind of error, no text of its answer.
    last_error: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)


class SurveyInvitation(Base):
    """A victim's survey link (``/s/{token}``, only its SHA-256 kept), of one call.
    Used once: then every invitation of that call is spent (``evr.evaluation.surveys``)."""

    __tablename__ = "survey_invitations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: How it reached the victim: "end_screen", "staff", "sms", "email".
    channel: Mapped[str] = mapped_column(String(16))
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class SurveyAnswer(Base):
    """One victim's answers, kept apart from who they are: no link to the invitation,
    the call or the incident; only the local day answered and what the figures are
    grouped by (grade, category, trial arm). Reported only in aggregate."""

    __tablename__ = "survey_answers"
    __table_args__ = (
        # Covering what the figures read: a year of answers is read from the index alone.
        Index("ix_survey_answers_figures", "answered_on", "satisfied", "would_use_again", "grade", "category"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # random: no order to match
    answered_on: Mapped[date] = mapped_column(Date)
    satisfied: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    would_use_again: Mapped[Optional[bool]] = mapped_column(Boolean, nullable=True)
    felt_safe: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    confidence_in_police: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    grade: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    category: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    arm: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)


class ApiKey(Base):
    """A key for a force's systems (``Authorization: Bearer``): only its SHA-256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, **kwargs)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Optional[Connection] = None) -> "Config":
    from alembic.config import Config  # imported when needed: commands start faster

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Upgrade the database to the newest migration."""

    def upgrade(connection: Connection) -> None:
        from alembic import command

        # "heads": features add their migrations on their own branches from 0003.
        command.upgrade(alembic_config(connection), "heads")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
