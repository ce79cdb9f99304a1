"""Victim surveys over HTTP: an officer makes a survey link for a closed call
(``POST /api/consultations/{id}/survey``); the victim opens ``/s/{token}`` (the survey
page) and sends the answers once (``POST /s/{token}``). The rules are in :mod:`.surveys`.

The survey page is a victim's page like the call's: a neutral title, the quick exit,
no police branding in the tab. Unknown tokens count towards the same per-address limit
as unknown call links (:class:`evr.links.UnknownTokens`).
"""

from __future__ import annotations

from aiohttp import web

from evr import pages
from evr.db import Consultation
from evr.errors import ApiError, forbidden
from evr.http import (
    AUDIT,
    CONSULTATIONS,
    SURVEYS,
    actor,
    base_url,
    current_staff,
    read_json,
    same_origin,
)
from evr.links import BINDING_COOKIE, LinkRefused, client_key, find, refuse_if_guessing, victim_actor
from evr.roles import CALL_ROLES

from .surveys import SurveyRefused, parse_answers


def setup(app: web.Application) -> None:
    app.add_routes([
        web.post("/api/consultations/{id}/survey", invite),
        web.post("/j/{token}/survey", offer),
        web.get("/s/{token}", survey_page),
        web.post("/s/{token}", answer),
    ])


async def invite(request: web.Request) -> web.Response:
    """201 ``{"survey_url"}``: a single-use link for the victim of a closed call."""
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    async with request.app[AUDIT].transaction() as tx:
        consultation = await request.app[CONSULTATIONS].get(tx.db, staff, request.match_info["id"])
        invited = await request.app[SURVEYS].invite(tx, consultation, "staff", actor(request, staff))
    return web.json_response({"survey_url": f"{base_url(request)}/s/{invited.token}",
                              "expires_at": invited.invitation.expires_at.isoformat()}, status=201)


async def offer(request: web.Request) -> web.Response:
    """``POST /j/{token}/survey``: the victim's end screen, once police have closed the
    call, asks for a survey link. Only the browser that claimed the link, within
    :data:`.surveys.OFFER_WITHIN` of the close; 201 ``{"survey_url"}``."""
    if not same_origin(request):
        raise forbidden("Ask from the appointment's own page.")
    throttle = refuse_if_guessing(request)
    service = request.app[CONSULTATIONS]
    holder = await find(request, request.match_info["token"])
    if holder is None:
        throttle.unknown(client_key(request))
        raise LinkRefused("unknown_link")
    if holder.guest is not None:  # the survey asks the victim about their experience
        raise ApiError(403, "guest_not_allowed", "The survey is for the person the appointment was for.")
    async with request.app[AUDIT].transaction() as tx:
        consultation = await tx.db.get(Consultation, holder.consultation.id)
        if consultation is None or consultation.binding_hash is None or not service.binding_ok(
                consultation, request.cookies.get(BINDING_COOKIE)):
            raise LinkRefused("link_in_use")
        surveys = request.app[SURVEYS]
        surveys.offerable(consultation)
        invited = await surveys.invite(tx, consultation, "end_screen", victim_actor(request))
    return web.json_response({"survey_url": f"{base_url(request)}/s/{invited.token}"}, status=201)


async def _usable(request: web.Request) -> None:
    throttle = refuse_if_guessing(request)
    try:
        await request.app[SURVEYS].usable(request.match_info["token"])
    except SurveyRefused as refused:
        if refused.reason == "unknown_survey":
            throttle.unknown(client_key(request))
        raise


async def survey_page(request: web.Request) -> web.Response:
    """The survey page, or a page saying why it cannot be answered."""
    try:
        await _usable(request)
    except SurveyRefused as refused:
        return pages.message(refused.status, "Survey", refused.message, "there is nothing more you need to do. "
                             "If you need the police, call 101.")
    return pages.survey()


async def answer(request: web.Request) -> web.Response:
    """201 once; then 410 (answered already)."""
    if not same_origin(request):
        raise forbidden("Send the survey from its own page.")
    await _usable(request)
    answers = parse_answers(await read_json(request))
    await request.app[SURVEYS].answer(request.match_info["token"], answers, victim_actor(request))
    return web.json_response({"answered": True}, status=201)
