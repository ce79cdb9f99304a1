"""Victim surveys: how the victim felt about the video response, asked once, kept apart
from who they are.

Forces that trialled video response asked victims four things (satisfaction, whether
they felt safe, their confidence in the police, whether they would use it again).
A victim gets a single-use link, ``/s/{token}``: the victim's end screen asks for one
when police close the call (``POST /j/{token}/survey``, the browser that claimed the
call's link, within a day), and an officer can make one for a closed call (``POST
/api/consultations/{id}/survey``); only the token's SHA-256 is kept.

Apart from who they are: the answers (:class:`evr.db.SurveyAnswer`) carry no link to the
invitation, the call or the incident, only the local day they were given and what the
figures are grouped by (the incident's grade and category). Their id is random, so the
order of rows says nothing either. Answering spends every invitation of that call (one
answer per call). The figures show a share only from
:data:`evr.evaluation.kpis.MIN_RESPONSES` answers, so no answer can be singled out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, cast
from zoneinfo import ZoneInfo

from sqlalchemy import CursorResult, select, update

from evr.audit import Actor, AuditLog
from evr.audit.writing import Appender
from evr.auth import sha256_hex
from evr.config import Settings
from evr.consultations import Consultations
from evr.db import Consultation, Incident, OutboxMessage, SurveyAnswer, SurveyInvitation
from evr.errors import ApiError
from evr.notify import compose
from evr.timeutil import Clock

log = logging.getLogger(__name__)

#: The questions: a scale of 1 (not at all) to 5 (very), but ``would_use_again`` (yes or no).
SCALES = ("satisfied", "felt_safe", "confidence_in_police")
QUESTIONS = ("satisfied", "would_use_again", "felt_safe", "confidence_in_police")
#: A survey link works this long.
SURVEY_TTL = timedelta(days=30)
#: The victim's end screen offers the survey for this long after police closed the call.
OFFER_WITHIN = timedelta(hours=24)
#: Calls closed longer ago than ``survey_delay_days`` plus this get no reminder (a new
#: server, or a new setting, does not message every victim of the past).
REMIND_WINDOW = timedelta(days=3)
#: How often the reminders are looked for inside ``evr serve`` (seconds).
REMIND_EVERY = 900.0
#: Invitations that went by message (one reminder per call).
MESSAGE_CHANNELS = ("sms", "email")
TOKEN_BYTES = 32


def parse_answers(body: Any) -> dict[str, Any]:
    """``{"answers": {...}}``: each question may be skipped (absent or null), but not all."""
    answers = body.get("answers") if isinstance(body, dict) else None
    if not isinstance(answers, dict):
        raise ApiError(422, "invalid_answers", "answers must be an object of the questions answered.",
                       fields=["answers"])
    unknown = sorted(set(answers) - set(QUESTIONS))
    if unknown:
        raise ApiError(422, "invalid_answers", "Unknown question(s): " + ", ".join(unknown[:5]) + ".",
                       fields=["answers"])
    found: dict[str, Any] = {}
    for name in SCALES:
        value = answers.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise ApiError(422, "invalid_answers", f"answers.{name} must be a whole number from 1 to 5.",
                           fields=[f"answers.{name}"])
        found[name] = value
    again = answers.get("would_use_again")
    if again is not None:
        if not isinstance(again, bool):
            raise ApiError(422, "invalid_answers", "answers.would_use_again must be true or false.",
                           fields=["answers.would_use_again"])
        found["would_use_again"] = again
    if not found:
        raise ApiError(422, "no_answers", "Answer at least one question (any may be skipped, not all).",
                       fields=["answers"])
    return found


class SurveyRefused(ApiError):
    """A survey link that cannot be used: unknown (404), answered or expired (410)."""

    PAGES = {
        "unknown_survey": (404, "This survey link does not match any survey."),
        "survey_answered": (410, "This survey has been answered already. Thank you."),
        "survey_expired": (410, "This survey link has expired."),
    }

    def __init__(self, reason: str) -> None:
        status, message = self.PAGES[reason]
        super().__init__(status, reason, message)


@dataclass(frozen=True)
class Invited:
    invitation: SurveyInvitation
    token: str


class Surveys:
    """Survey invitations and answers, and the reminder sent after ``survey_delay_days``."""

    def __init__(self, settings: Settings, clock: Clock, audit: AuditLog, consultations: Consultations) -> None:
        self.settings = settings
        self.clock = clock
        self.audit = audit
        #: The link messages' notifier and outbox (the reminder goes the same way).
        self.consultations = consultations

    async def invite(self, tx: Appender, consultation: Consultation, channel: str, who: Actor) -> Invited:
        """A new single-use link for the victim of ``consultation`` (a closed call), in ``tx``."""
        if consultation.status != "closed":
            raise ApiError(409, "call_not_closed", "A survey is about the call: close it first.")
        spent = await tx.db.scalar(select(SurveyInvitation.id).where(
            SurveyInvitation.consultation_id == consultation.id, SurveyInvitation.used.is_(True)).limit(1))
        if spent is not None:
            raise ApiError(409, "survey_answered", "The victim has answered this call's survey already.")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        invitation = SurveyInvitation(id=str(uuid.uuid4()), consultation_id=consultation.id,
                                      token_hash=sha256_hex(token), created_at=now, expires_at=now + SURVEY_TTL,
                                      channel=channel, used=False)
        tx.db.add(invitation)
        await tx.db.flush()
        tx.add(who, "survey.invite", f"consultation:{consultation.id}", consultation_id=consultation.id,
               details={"channel": channel, "survey_id": invitation.id})
        return Invited(invitation, token)

    def offerable(self, consultation: Consultation) -> None:
        """The end screen may offer a survey: the call closed within :data:`OFFER_WITHIN`."""
        if consultation.status != "closed":
            raise ApiError(409, "call_not_closed", "A survey is about the call: it is not over yet.")
        if consultation.closed_at is None or self.clock() - consultation.closed_at > OFFER_WITHIN:
            raise ApiError(410, "survey_offer_expired", "This appointment ended too long ago to offer a survey here.")

    async def remind_due(self) -> int:
        """Send the survey's link once to the victims of calls closed
        ``survey_delay_days`` ago (at most :data:`REMIND_WINDOW` more) who have not
        answered, by the channel their call link went by (else SMS to a phone, else
        email); returns how many were sent. Nothing without ``public_url`` (a link needs
        the service's address) or with a delay of 0."""
        delay = self.settings.survey_delay_days
        if not delay or not self.settings.public_url:
            return 0
        now = self.clock()
        due = now - timedelta(days=delay)
        answered = select(SurveyInvitation.consultation_id).where(SurveyInvitation.used.is_(True))
        messaged = select(SurveyInvitation.consultation_id).where(SurveyInvitation.channel.in_(MESSAGE_CHANNELS))
        async with self.audit.db_factory() as db:
            calls = list(await db.scalars(select(Consultation).where(
                Consultation.status == "closed", Consultation.closed_at <= due,
                Consultation.closed_at > due - REMIND_WINDOW, Consultation.id.not_in(answered),
                Consultation.id.not_in(messaged)).order_by(Consultation.closed_at).limit(200)))
            first = {m.consultation_id: m.channel for m in await db.scalars(
                select(OutboxMessage).where(OutboxMessage.consultation_id.in_([c.id for c in calls]))
                .order_by(OutboxMessage.id.desc()))}
        sent = 0
        for call in calls:
            channel = first.get(call.id) or ("sms" if call.victim.get("phone") else "email")
            recipient = call.victim.get("phone" if channel == "sms" else "email")
            if not recipient:
                continue
            async with self.audit.transaction() as tx:
                invited = await self.invite(tx, call, channel, Actor.system())
                message = compose(channel, recipient, f"{self.settings.public_url.rstrip('/')}/s/{invited.token}",
                                  survey=True)
                row = OutboxMessage(consultation_id=call.id, channel=channel, recipient=recipient, body=message.kept,
                                    created_at=now, status="pending", provider=self.consultations.notifier.name)
                tx.db.add(row)
            async with self.audit.db_factory() as db:
                await self.consultations.deliver(db, row, message)
            sent += 1
        if sent:
            log.info("survey reminders sent: %d", sent)
        return sent

    async def usable(self, token: str) -> SurveyInvitation:
        """The invitation behind a link, if it may still be answered (else :class:`SurveyRefused`)."""
        async with self.audit.db_factory() as db:
            return self._check(await self._find(db, token))

    @staticmethod
    async def _find(db: Any, token: str) -> Optional[SurveyInvitation]:
        if not token or len(token) > 128:
            return None
        return await db.scalar(select(SurveyInvitation).where(SurveyInvitation.token_hash == sha256_hex(token)))

    def _check(self, invitation: Optional[SurveyInvitation]) -> SurveyInvitation:
        if invitation is None:
            raise SurveyRefused("unknown_survey")
        if invitation.used:
            raise SurveyRefused("survey_answered")
        if invitation.expires_at <= self.clock():
            raise SurveyRefused("survey_expired")
        return invitation

    async def answer(self, token: str, answers: dict[str, Any], who: Actor) -> None:
        """Keep the answers (apart from the call) and spend every invitation of the call;
        a second answer, even racing the first, is refused (410)."""
        async with self.audit.transaction() as tx:
            invitation = self._check(await self._find(tx.db, token))
            spent = await tx.db.execute(update(SurveyInvitation).where(
                SurveyInvitation.consultation_id == invitation.consultation_id, SurveyInvitation.used.is_(False))
                .values(used=True).execution_options(synchronize_session=False))
            if not cast(CursorResult[Any], spent).rowcount:
                raise SurveyRefused("survey_answered")
            incident = await tx.db.scalar(select(Incident).join(
                Consultation, Consultation.incident_id == Incident.id).where(
                Consultation.id == invitation.consultation_id))
            today = self.clock().astimezone(ZoneInfo(self.settings.timezone)).date()
            tx.db.add(SurveyAnswer(id=str(uuid.uuid4()), answered_on=today,
                                   grade=incident.grade if incident else None,
                                   category=incident.category if incident else None,
                                   arm=incident.arm if incident else None, **answers))
            # That the victim answered, never what.
            tx.add(who, "survey.answer", f"consultation:{invitation.consultation_id}",
                   consultation_id=invitation.consultation_id, details={"survey_id": invitation.id})
        log.info("survey answered")


async def remind_forever(surveys: Surveys, every: float = REMIND_EVERY) -> None:
    """Inside ``evr serve``: look for survey reminders due, now and then."""
    while True:
        await asyncio.sleep(every)
        try:
            await surveys.remind_due()
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("survey reminders failed")
