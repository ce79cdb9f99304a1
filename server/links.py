"""The links of a call: which consultation a request to ``/j/{token}/...`` is for,
whose link it is (the victim's, or a guest's: :mod:`evr.guests`), and whether this
browser may use it (open, not expired, claimed by this browser).

A guest's link works exactly as the victim's, through the same code here (a
:class:`LinkHolder` names whose it is): the same page (told the holder's role), claim,
binding cookie and socket. What only the victim may do under their link (uploads and
statements: :func:`victim_link`) is refused to a guest with 403 ``guest_not_allowed``.

Opening the link binds nothing. Email security scanners, SMS and chat previews fetch
a link before the victim does, and a ``GET`` or ``HEAD`` that bound it would hand the
call to them. The page's script claims the link (``POST /j/{token}/claim``, same
origin only) when the victim presses its first button; the answer sets the binding
cookie, and every other resource under the link needs that cookie. Of any number of
browsers claiming at once exactly one wins (one conditional UPDATE), and the claim
is audit-logged in the same transaction.

Everything under ``/j/{token}/`` (the claim, the socket, uploads, statements) is an
API for the page's scripts and answers in the contract's JSON error shape whatever goes
wrong; only the page itself answers with pages a person can read. Both are rendered
from one :class:`LinkRefused` by :func:`evr.app.json_errors`.

Guessing tokens is hopeless (256 bits) but not free: unknown tokens are counted per
client address and past ``link_unknown_per_minute`` in a minute that address gets 429
for the rest of the minute (:class:`UnknownTokens`), logged once, not once a guess.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from aiohttp import web

from . import pages
from .audit import Actor
from .auth import sha256_hex
from .db import Consultation, Guest
from .errors import ApiError
from .http import AUDIT, CONSULTATIONS, DB, GUESTS, HUB, SETTINGS, UNKNOWN_TOKENS, same_origin, secure_cookies

log = logging.getLogger(__name__)

#: The cookie that binds a link to the browser that claimed it.
BINDING_COOKIE = "evr_link"

#: How many addresses the throttle remembers at most (memory stays bounded).
MAX_ADDRESSES = 100_000



class UnknownTokens:
    """Counts unknown link tokens per client address in fixed one-minute windows."""

    def __init__(self, limit: int, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        #: address -> [window start, unknown tokens in it]
        self._seen: dict[str, list[float]] = {}

    def _entry(self, address: str) -> Optional[list[float]]:
        entry = self._seen.get(address)
        if entry is not None and self.clock() - entry[0] >= self.window:
            del self._seen[address]
            return None
        return entry

    def retry_after(self, address: str) -> Optional[int]:
        """Seconds until ``address`` may look up links again; None when it may now."""
        entry = self._entry(address)
        if entry is None or entry[1] < self.limit:
            return None
        return max(1, int(entry[0] + self.window - self.clock()) + 1)

    def unknown(self, address: str) -> None:
        """Count an unknown token from ``address`` (one summary line when it reaches the limit)."""
        entry = self._entry(address)
        if entry is None:
            if len(self._seen) >= self.max_addresses:
                self._prune()
            entry = self._seen[address] = [self.clock(), 0]
        entry[1] += 1
        log.debug("unknown link token (client=%s, %d this minute)", address, entry[1])
        if entry[1] == self.limit:
            log.warning("client %s presented %d unknown link tokens within a minute; its link requests "
                        "get 429 until the minute is over", address, self.limit)

    def _prune(self) -> None:
        now = self.clock()
        for address in [a for a, (start, _) in self._seen.items() if now - start >= self.window]:
            del self._seen[address]
        if len(self._seen) >= self.max_addresses:  # a flood of addresses: forget the oldest half
            for address in sorted(self._seen, key=lambda a: self._seen[a][0])[: len(self._seen) // 2]:
                del self._seen[address]


class LinkRefused(ApiError):
    """Why this request may not use the link. Raised wherever the link is checked and
    rendered in one place (:func:`evr.app.json_errors`): the contract's JSON error for
    the APIs under the link, the page that says what to do next (:func:`pages.refusal`)
    for the link's own page. ``Retry-After`` when throttled."""

    #: reason (the page's name) -> (status, the API's error code, message)
    REASONS = {
        "unknown_link": (404, "unknown_link", "This link is not known."),
        "link_closed": (410, "link_closed", "This link has been closed."),
        "link_expired": (410, "link_closed", "This link has expired."),
        "link_in_use": (403, "link_in_use", "This link is in use in another browser."),
        "too_many_unknown_links": (429, "too_many_unknown_links", "Too many unknown links from this address: "
                                                                  "wait a minute."),
    }

    def __init__(self, reason: str, retry_after: Optional[int] = None) -> None:
        status, code, message = self.REASONS[reason]
        super().__init__(status, code, message, reason=reason, retry_after=retry_after)


def client_key(request: web.Request) -> str:
    """Whom unknown tokens are counted against (:class:`UnknownTokens`): the client's address."""
    return request.remote or "-"


def refuse_if_guessing(request: web.Request) -> UnknownTokens:
    """429 (:class:`LinkRefused`) for an address past its limit of unknown tokens, on
    every path a token opens (the call's link, the survey's); else the counter, to count
    this request's token if it is unknown."""
    throttle = request.app[UNKNOWN_TOKENS]
    wait = throttle.retry_after(client_key(request))
    if wait is not None:
        raise LinkRefused("too_many_unknown_links", wait)
    return throttle


@dataclass(frozen=True)
class LinkHolder:
    """Whose link a token is: the victim's (``guest`` None) or a guest's, and the
    consultation it opens."""

    consultation: Consultation
    guest: Optional[Guest] = None

    @property
    def row(self) -> Union[Consultation, Guest]:
        """The row holding the link's binding and expiry."""
        return self.consultation if self.guest is None else self.guest

    @property
    def key(self) -> str:
        """The holder's participant id in the call (``victim``, ``guest:<id>``)."""
        return "victim" if self.guest is None else f"guest:{self.guest.id}"

    @property
    def role(self) -> str:
        return "victim" if self.guest is None else self.guest.role

    @property
    def name(self) -> Optional[str]:
        """The guest's name as staff gave it; the victim is never named in the call."""
        return None if self.guest is None else self.guest.name

    def actor(self, request: web.Request) -> Actor:
        """The audit log's view of the holder: never named, the link is who they are
        (a guest's role goes in an entry's details: the role column is for staff roles)."""
        return victim_actor(request) if self.guest is None else Actor(self.key, "guest", request.remote)


async def find(request: web.Request, token: str) -> Optional[LinkHolder]:
    """Whose link ``token`` is (the victim's or a guest's), whatever its state; None
    when nobody's. Callers count an unknown token (:func:`refuse_if_guessing`)."""
    async with request.app[DB]() as db:
        consultation = await request.app[CONSULTATIONS].by_token(db, token)
        if consultation is not None:
            return LinkHolder(consultation)
        found = await request.app[GUESTS].by_token(db, token)
    return None if found is None else LinkHolder(found[1], found[0])


async def link_holder(request: web.Request) -> LinkHolder:
    """Whose link this is, if this browser may use it now; otherwise
    :class:`LinkRefused` says why. An unclaimed link is returned as it is (its page may
    be shown; nothing else may be used)."""
    throttle = refuse_if_guessing(request)
    holder = await find(request, request.match_info["token"])
    if holder is None:
        throttle.unknown(client_key(request))
        raise LinkRefused("unknown_link")
    if holder.guest is None:
        state = request.app[CONSULTATIONS].link_state(holder.consultation)
    else:
        state = request.app[GUESTS].link_state(holder.guest, holder.consultation)
    if state == "closed":
        raise LinkRefused("link_closed")
    if state == "expired":
        raise LinkRefused("link_expired")
    binding = holder.row.binding_hash
    cookie = request.cookies.get(BINDING_COOKIE)
    if binding is not None and not (cookie and secrets.compare_digest(binding, sha256_hex(cookie))):
        log.info("link used by a browser that did not claim it; refused (consultation=%s %s)",
                 holder.consultation.id, holder.key)
        raise LinkRefused("link_in_use")
    return holder


async def claimed_link(request: web.Request) -> LinkHolder:
    """For the APIs under the link that every holder may use (the socket, the chat):
    whose link it is, once this browser has claimed it; otherwise
    :class:`LinkRefused` (403 ``link_not_claimed`` before any claim)."""
    holder = await link_holder(request)
    if holder.row.binding_hash is None:
        raise ApiError(403, "link_not_claimed", "Open the link and start on its page first.")
    return holder


async def victim_link(request: web.Request) -> Consultation:
    """For the victim's own APIs under the link (uploads, statements): the
    consultation, once this browser has claimed the victim's link; a guest's link is
    refused (403 ``guest_not_allowed``)."""
    holder = await link_holder(request)
    if holder.guest is not None:
        raise ApiError(403, "guest_not_allowed", "This is for the person the appointment is for.")
    if holder.row.binding_hash is None:
        raise ApiError(403, "link_not_claimed", "Open the link and start on its page first.")
    return holder.consultation


def victim_actor(request: web.Request) -> Actor:
    """The audit log's view of the victim (never named: the link is who they are)."""
    return Actor("victim", "victim", request.remote)


# -- the handlers ----------------------------------------------------------------


async def link_page(request: web.Request) -> web.Response:
    """``GET``/``HEAD /j/{token}``: the victim's page (for a guest, told their role),
    or why not. Binds nothing."""
    holder = await link_holder(request)
    return pages.victim(holder.role)


async def claim(request: web.Request) -> web.Response:
    """``POST /j/{token}/claim`` from the page's script: bind the link to this browser.

    200 ``{"status"}`` and the binding cookie for the first browser, and for it again;
    403 for any other browser or without a same-origin ``Origin``; 410 closed or
    expired; 404 unknown."""
    if request.headers.get("Origin") is None or not same_origin(request):
        raise ApiError(403, "cross_origin", "A link is claimed from its own page only.")
    holder = await link_holder(request)
    consultation = holder.consultation
    if holder.row.binding_hash is not None:  # claimed by this very browser (its cookie matched)
        return web.json_response({"status": consultation.status})
    async with request.app[AUDIT].transaction() as tx:
        if holder.guest is None:
            secret = await request.app[CONSULTATIONS].claim(tx.db, consultation)
            claimed, details = f"consultation:{consultation.id}", None
        else:
            secret = await request.app[GUESTS].claim(tx.db, holder.guest)
            claimed, details = holder.key, {"role": holder.role}
        if secret is not None:
            tx.add(holder.actor(request), "link.claim", claimed, consultation_id=consultation.id, details=details)
    if secret is None:  # another browser claimed it a moment earlier, or it closed or expired
        await link_holder(request)  # raises why
        raise LinkRefused("link_in_use")
    response = web.json_response({"status": consultation.status})
    # Lax, not Strict: the victim comes back by tapping the link in a message (a
    # navigation from another site) and must be recognised.
    response.set_cookie(
        BINDING_COOKIE, secret, httponly=True, samesite="Lax", secure=secure_cookies(request),
        path=f"/j/{request.match_info['token']}",
        max_age=int(request.app[SETTINGS].binding_cookie_days * 86400),
    )
    return response


async def link_socket(request: web.Request) -> web.StreamResponse:
    """``GET /j/{token}/ws``: the victim's or a guest's signalling socket (claimed
    links only). Refused with JSON errors like the other APIs under the link: a socket
    is not a page, and a browser's WebSocket never shows one."""
    holder = await claimed_link(request)
    if not same_origin(request):
        raise ApiError(403, "cross_origin", "Cross-origin connection refused.")
    return await request.app[HUB].join(request, holder.consultation, holder.key, holder.role, None, holder.name,
                                       holder.actor(request))


def setup(app: web.Application) -> None:
    """The link's page, the claim and the socket (the victim's and guests')."""
    app.add_routes([
        web.get("/j/{token}", link_page),
        web.post("/j/{token}/claim", claim),
        web.get("/j/{token}/ws", link_socket),
    ])
