"""What every HTTP view shares: the application's keys and request helpers.

Feature modules (recordings, uploads, statements, retention...) register their own
routes with a ``setup(app)`` function called from :func:`evr.app.create_app`, and
import what they need from here.
"""

from __future__ import annotations

from typing import Any, Optional

from aiohttp import web
from yarl import URL

from .audit import Actor, AuditLog
from .auth import Authenticator, Staff
from .config import Settings
from .consultations import Consultations
from .errors import ApiError
from .signalling import Hub
from .text import JsonError, parse_json

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", object)
DB = web.AppKey("db", object)
AUTH = web.AppKey("auth", Authenticator)
CONSULTATIONS = web.AppKey("consultations", Consultations)
HUB = web.AppKey("hub", Hub)
NOTIFIER = web.AppKey("notifier", object)
AUDIT = web.AppKey("audit", AuditLog)
STORE = web.AppKey("store", object)
SIGNING_KEY = web.AppKey("signing_key", object)
RECORDINGS = web.AppKey("recordings", object)
STAFF = web.RequestKey("staff", object)


def current_staff(request: web.Request) -> Staff:
    staff = request[STAFF]
    if staff is None:
        raise ApiError(401, "unauthenticated", "Log in first.")
    return staff


async def read_json(request: web.Request) -> Any:
    """The body as JSON: 400 ``malformed_json`` (also for nesting past
    :data:`evr.text.MAX_JSON_DEPTH`), 422 ``unencodable_text`` for a lone surrogate,
    413 past the size limit."""
    try:
        text = await request.text()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", "The request body is too large.") from None
    except (ValueError, UnicodeDecodeError, LookupError):  # LookupError: an unknown charset
        raise ApiError(400, "malformed_json", "The body is not valid JSON (nor UTF-8 text).") from None
    try:
        return parse_json(text)
    except JsonError as exc:
        fields = {"fields": [exc.field]} if exc.field else {}
        raise ApiError(400 if exc.code == "malformed_json" else 422, exc.code, str(exc), **fields) from None


def same_origin(request: web.Request) -> bool:
    """No ``Origin`` (not a browser), or the whole origin (scheme, host and port) of
    the service: ``public_url``'s when configured, else the request's own
    ``scheme://host``. For WebSockets and the login, which a hostile page could
    otherwise open or post from the victim's or officer's browser."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    expected = _origin(base_url(request), path_allowed=True)
    return expected is not None and _origin(origin) == expected


def _origin(value: str, path_allowed: bool = False) -> Optional[tuple[str, str, Optional[int]]]:
    """(scheme, host, port) of an http(s) origin, default ports made explicit; None
    for anything else (``null``, junk, user info, a path in an ``Origin`` header)."""
    try:
        url = URL(value)
        host = url.host
    except (ValueError, TypeError):  # UnicodeError is a ValueError
        return None
    if url.scheme not in ("http", "https") or not host or url.user is not None or url.password is not None:
        return None
    if not path_allowed and (url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment):
        return None
    return url.scheme, host.lower().rstrip("."), url.port


def base_url(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_url
    return configured or f"{request.scheme}://{request.host}"


def secure_cookies(request: web.Request) -> bool:
    return request.secure or request.app[SETTINGS].secure_cookies or base_url(request).startswith("https:")


def actor(request: web.Request, staff: Staff) -> Actor:
    """The audit log's view of the member of staff behind a request."""
    return Actor(staff.username, staff.role, request.remote)
