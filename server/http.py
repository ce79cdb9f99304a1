"""What every HTTP view shares: the application's keys and request helpers.

Feature modules (recordings, uploads, statements, retention...) register their own
routes with a ``setup(app)`` function called from :func:`evr.app.create_app`, and
import what they need from here. Every service behind these keys is built in one
place, :func:`evr.services.services`.

Every key is typed exactly (``app[HUB]`` is a :class:`~evr.signalling.Hub` to a type
checker, as in aiohttp's ``examples/background_tasks.py``). The types are imported for
the checker only: this module is imported by every view and by the command line's
helpers, and must not load aiortc (the media stack) or the statement signer with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from aiohttp import web
from yarl import URL

from .audit import Actor
from .errors import ApiError
from .text import JsonError, parse_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from .audit import AuditLog
    from .auth import Authenticator, Staff
    from .chat import Chat
    from .config import Settings
    from .consultations import Consultations
    from .evaluation.surveys import Surveys
    from .evidence import EvidenceStore
    from .guests import Guests
    from .incidents.board import QueueBoard
    from .incidents.service import Incidents
    from .links import UnknownTokens
    from .location import Locations
    from .notify import Notifier
    from .recording.redactions import Jobs
    from .recording.service import Recordings
    from .retention.service import Retention
    from .signalling import Hub
    from .statements.service import Statements
    from .timeutil import Clock
    from .uploads.service import Uploads

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
DB: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("db")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
CONSULTATIONS: web.AppKey[Consultations] = web.AppKey("consultations")
HUB: web.AppKey[Hub] = web.AppKey("hub")
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")
AUDIT: web.AppKey[AuditLog] = web.AppKey("audit")
STORE: web.AppKey[EvidenceStore] = web.AppKey("store")
SIGNING_KEY: web.AppKey[Ed25519PrivateKey] = web.AppKey("signing_key")
RECORDINGS: web.AppKey[Recordings] = web.AppKey("recordings")
REDACTIONS: web.AppKey[Jobs] = web.AppKey("redactions")
UPLOADS: web.AppKey[Uploads] = web.AppKey("uploads")
STATEMENTS: web.AppKey[Statements] = web.AppKey("statements")
RETENTION: web.AppKey[Retention] = web.AppKey("retention")
QUEUE_BOARD: web.AppKey[QueueBoard] = web.AppKey("queue_board")
INCIDENTS: web.AppKey[Incidents] = web.AppKey("incidents")
UNKNOWN_TOKENS: web.AppKey[UnknownTokens] = web.AppKey("unknown_link_tokens")
SURVEYS: web.AppKey[Surveys] = web.AppKey("surveys")
CHAT: web.AppKey[Chat] = web.AppKey("chat")
LOCATIONS: web.AppKey[Locations] = web.AppKey("locations")
GUESTS: web.AppKey[Guests] = web.AppKey("guests")
#: How many media worker processes ``evr serve`` runs (0: the media runs in the serving process).
MEDIA_WORKERS: web.AppKey[int] = web.AppKey("media_workers")
STAFF: web.RequestKey[Optional[Staff]] = web.RequestKey("staff")


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
        fields: dict[str, Any] = {"fields": [exc.field]} if exc.field else {}
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
