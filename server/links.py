"""The victim's link: which consultation a request to ``/j/{token}/...`` is for, and
whether this browser may use it (open, not expired, bound to this browser)."""

from __future__ import annotations

import logging
from typing import Optional

from aiohttp import web

from . import pages
from .audit import Actor
from .db import Consultation
from .errors import ApiError
from .http import CONSULTATIONS, DB

log = logging.getLogger(__name__)

#: The cookie that binds a link to the first browser that opened it.
BINDING_COOKIE = "evr_link"

#: What an API under /j/{token}/ answers instead of the pages' refusals.
_REFUSALS = {
    404: ("unknown_link", "This link is not known."),
    410: ("link_closed", "This link has been closed or has expired."),
    403: ("link_in_use", "This link is in use in another browser."),
}


async def victim_consultation(request: web.Request) -> tuple[Optional[Consultation], Optional[web.Response]]:
    """The consultation behind the link, or the page that says why not."""
    service = request.app[CONSULTATIONS]
    token = request.match_info["token"]
    async with request.app[DB]() as db:
        consultation = await service.by_token(db, token)
        if consultation is None:
            return None, pages.link_unknown()
        state = service.link_state(consultation)
        if state == "closed":
            return None, pages.link_closed()
        if state == "expired":
            return None, pages.link_expired()
        cookie = request.cookies.get(BINDING_COOKIE)
        if consultation.binding_hash is None:
            return consultation, None
        if not service.binding_ok(consultation, cookie):
            log.warning("link opened in a second browser; refused (consultation=%s)", consultation.id)
            return None, pages.link_in_use()
        return consultation, None


async def victim_link(request: web.Request) -> Consultation:
    """For JSON APIs under the link: the consultation, once the link has been opened in
    this browser; otherwise an ``ApiError`` with the same status the pages give."""
    consultation, refusal = await victim_consultation(request)
    if refusal is not None:
        code, message = _REFUSALS.get(refusal.status, _REFUSALS[403])
        raise ApiError(refusal.status, code, message)
    assert consultation is not None
    if consultation.binding_hash is None:
        raise ApiError(403, "open_link_first", "Open the link in your browser first.")
    return consultation


def victim_actor(request: web.Request) -> Actor:
    """The audit log's view of the victim (never named: the link is who they are)."""
    return Actor("victim", "victim", request.remote)
