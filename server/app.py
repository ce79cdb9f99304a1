"""The aiohttp application: routes, middlewares and the objects they share."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web

from . import chat, disclosure, guests, links, openapi, pages, uploads
from .audit import Actor
from .auth import CSRF_HEADER, SESSION_COOKIE, csrf_ok, resolve_api_key
from .config import Settings
from .consultations import consultation_json, created_json, message_json, parse_new
from .db import Consultation
from .errors import ApiError, error_response, forbidden
from .evaluation import api as evaluation_api
from .evaluation import survey_api
from .http import (
    AUDIT,
    AUTH,
    CLOCK,
    CONSULTATIONS,
    DB,
    HUB,
    INCIDENTS,
    MEDIA_WORKERS,
    NOTIFIER,
    QUEUE_BOARD,
    SETTINGS,
    STAFF,
    actor,
    base_url,
    current_staff,
    read_json,
    same_origin,
    secure_cookies,
)
from .incidents import api as incidents_api
from .notify import Notifier
from .recording import api as recording_api
from .retention import api as retention_api
from .roles import CALL_ROLES
from .services import services, shutdown
from .statements import api as statements_api
from .text import plain_text
from .timeutil import Clock, rfc3339, utcnow

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)



def create_app(settings: Settings, clock: Clock = utcnow, notifier: Optional[Notifier] = None,
               workers: int = 0) -> web.Application:
    """The application: middlewares, every feature's routes, and the composition
    root (:func:`evr.services.services`) that builds their services at start. With
    ``workers``, the calls' media runs in that many worker processes
    (:mod:`evr.media.pool`); without, in this process."""
    app = web.Application(middlewares=[forwarded_client(settings), json_errors, plain_parameters, staff_session],
                          client_max_size=MAX_JSON_BODY)
    app.on_response_prepare.append(security_headers)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[MEDIA_WORKERS] = workers
    if notifier is not None:  # the tests' own gateway; else the configured one
        app[NOTIFIER] = notifier
    app.cleanup_ctx.append(services)  # every service, built and wired in one place
    uploads.setup(app)
    recording_api.setup(app)
    retention_api.setup(app)
    statements_api.setup(app)
    incidents_api.setup(app)
    evaluation_api.setup(app)
    survey_api.setup(app)
    links.setup(app)
    guests.setup(app)
    chat.setup(app)
    disclosure.setup(app)
    openapi.setup(app)
    app.on_shutdown.append(shutdown)
    app.add_routes(
        [
            web.get("/", home),
            web.get("/healthz", healthz),
            web.get("/favicon.ico", no_content),
            web.post("/api/login", login),
            web.post("/api/logout", logout),
            web.get("/api/me", me),
            web.post("/api/consultations", create_consultation),
            web.get("/api/consultations", list_consultations),
            web.get("/api/consultations/{id}", get_consultation),
            web.post("/api/consultations/{id}/close", close_consultation),
            web.get("/api/consultations/{id}/ws", staff_socket),
            web.get("/internal/rooms/{id}/ws", carried_socket),
            web.get("/api/outbox", outbox),
            web.get("/console", pages.console),
            web.static("/static", pages.WEB_DIR, show_index=False, append_version=False),
        ]
    )
    return app


# -- middlewares -------------------------------------------------------------


SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(self), microphone=(self), geolocation=(self), display-capture=(self)",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=63072000; includeSubDomains"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Set on every response as it is prepared (``on_response_prepare``), so streamed
    answers (playback, exports, evidence content, CSV) get them too: a middleware sees
    a streamed response only after its headers have gone. A handler's own value wins
    (e.g. the stricter sandbox of evidence content)."""
    headers = response.headers
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    if request.secure or request.app[SETTINGS].public_url.lower().startswith("https://"):
        headers.setdefault("Strict-Transport-Security", HSTS)
    if request.path.startswith(("/j/", "/api/")):
        # Nothing of a victim's visit or a staff answer may stay in a cache.
        headers["Cache-Control"] = "no-store"


def forwarded_client(settings: Settings) -> Any:
    """A middleware giving each request its real client address behind the force's
    reverse proxies (``trusted_proxies``): the right-most ``X-Forwarded-For`` address
    that is not itself a trusted proxy. Without trusted proxies it is the identity, so
    nobody can choose their own address (and escape a throttle) by writing a header."""
    networks = [ipaddress.ip_network(n.strip(), strict=False)
                for n in settings.trusted_proxies.split(",") if n.strip()]

    def trusted(address: Optional[str]) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in networks)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not networks or not trusted(request.remote):
            return await handler(request)
        client = request.remote or ""
        for hop in reversed(",".join(request.headers.getall("X-Forwarded-For", [])).split(",")):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # a hop we cannot read: stop at the last one we could trust
            client = hop
            if not trusted(hop):
                break
        return await handler(request.clone(remote=client))

    return middleware


def wants_json(request: web.Request) -> bool:
    """API paths answer errors as JSON: everything under /api/, and the victim's APIs
    under /j/{token}/ (claim, socket, uploads, statements); only the link's page
    answers with pages."""
    path = request.path
    if path.startswith("/api/"):
        return True
    parts = path.split("/")  # "", "j", token, resource...
    if len(parts) == 3 and parts[1] == "s" and request.method == "POST":  # a survey's answers
        return True
    return len(parts) > 3 and parts[1] == "j" and parts[3] != ""


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place refusals are rendered: the contract's JSON error for every API
    (``/api/``, ``/j/{token}/…``), a page a person can read for the pages (the link's
    refusals: unknown, closed, expired, in use); never a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        if wants_json(request):
            return exc.response()
        return pages.refusal(exc.status, exc.reason, exc.message, exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400 or not wants_json(request):
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        # The route's pattern, never the path: a victim's path carries the link's token.
        resource = request.match_info.route.resource
        log.exception("unhandled error on %s %s", request.method, resource.canonical if resource else "?")
        if wants_json(request):
            return error_response(500, "internal_error", "Something went wrong on the server.")
        return pages.message(500, "Something went wrong",
                             "Please try again in a minute. If you are in danger call 999.")


@web.middleware
async def plain_parameters(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Query parameters are single-line text every back end can store, or 400
    ``invalid_parameter``: a NUL reached PostgreSQL (a 500) from whatever query a
    handler forgot to check, and no parameter of EVR's holds a control character.
    (Path segments are ids and tokens, which their handlers check: a bad one is 404.)"""
    for name, value in request.query.items():
        if not plain_text(value, multiline=False) or not plain_text(name, multiline=False):
            raise ApiError(400, "invalid_parameter",
                           f"The parameter {name[:40]!r} holds control characters or text that is not valid Unicode.")
    return await handler(request)


@web.middleware
async def staff_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the session cookie on /api/ and demand the CSRF header on changes; or
    an API key (``Authorization: Bearer``), which needs neither (401 when unknown or
    revoked)."""
    request[STAFF] = None
    if request.path.startswith("/api/") and request.path != "/api/login":
        authorization = request.headers.get("Authorization")
        async with request.app[DB]() as db:
            if authorization is not None:  # a force's system: no session, no CSRF
                request[STAFF] = await resolve_api_key(db, authorization)
                return await handler(request)
            staff = await request.app[AUTH].resolve(db, request.cookies.get(SESSION_COOKIE))
        request[STAFF] = staff
        if staff is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
            if not csrf_ok(staff, request.headers.get(CSRF_HEADER)):
                raise ApiError(403, "csrf", f"The {CSRF_HEADER} header is missing or wrong.")
    return await handler(request)


# -- staff -------------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console")


async def no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def login(request: web.Request) -> web.Response:
    """Only a JSON post from the service's own origin: a form or ``text/plain`` post
    (which any page may send cross-site without asking) is 415, another ``Origin``
    403, so no page can log a browser in to an account of its choosing."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the login as JSON (Content-Type: application/json).")
    if not same_origin(request):
        raise ApiError(403, "cross_origin", "Log in from the service's own pages.")
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("username"), str) or not isinstance(
        body.get("password"), str
    ):
        raise ApiError(400, "bad_request", "Send a JSON object with username and password.")
    auth = request.app[AUTH]
    async with request.app[DB]() as db:
        user = await auth.check(db, body["username"], body["password"], request.remote)
    # The session and its audit entry commit together, or neither.
    async with request.app[AUDIT].transaction() as tx:
        staff, token = auth.open_session(tx.db, user)
        tx.add(actor(request, staff), "auth.login", f"user:{staff.username}")
    log.info("login ok (user=%s role=%s)", staff.username, staff.role)
    response = web.json_response({"username": staff.username, "role": staff.role, "csrf_token": staff.csrf_token})
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=secure_cookies(request), path="/",
        max_age=int(request.app[SETTINGS].session_ttl_hours * 3600),
    )
    return response


async def logout(request: web.Request) -> web.Response:
    staff = current_staff(request)
    async with request.app[AUDIT].transaction() as tx:  # the session ends with its audit entry
        await request.app[AUTH].logout(tx.db, staff)
        tx.add(actor(request, staff), "auth.logout", f"user:{staff.username}")
    # The session's signalling sockets end with it, now (close code 4003).
    await request.app[HUB].end_sessions([staff.session_id], "You signed out.")
    await request.app[QUEUE_BOARD].end_sessions([staff.session_id], "You signed out.")
    response = web.json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    staff = current_staff(request)
    return web.json_response({"username": staff.username, "role": staff.role, "csrf_token": staff.csrf_token})


async def create_consultation(request: web.Request) -> web.Response:
    """201 with the only copy of the link anyone will see: the consultation, its
    outbox message and the audit entry commit together, then the message goes out."""
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    new = parse_new(await read_json(request))
    service = request.app[CONSULTATIONS]
    async with request.app[AUDIT].transaction() as tx:
        created = await service.create(tx.db, staff, new, base_url(request))
        consultation = created.consultation
        # Which personal data was collected; never the values (the audit log is never erased).
        tx.add(
            actor(request, staff), "consultation.create", f"consultation:{consultation.id}",
            consultation_id=consultation.id,
            details={"collected": sorted(f"victim.{k}" for k in new.victim), "cad_ref": consultation.cad_ref,
                     "link_sent_by": new.notify},
        )
    message = None
    if created.message is not None and created.link is not None:
        async with request.app[DB]() as db:
            message = await service.deliver(db, created.message, created.link)
    body = created_json(created, message)  # the link, for its creator only
    return web.json_response(body, status=201)


async def list_consultations(request: web.Request) -> web.Response:
    staff = current_staff(request)
    async with request.app[DB]() as db:
        rows = await request.app[CONSULTATIONS].list(db, staff)
    present = await request.app[HUB].participants([c.id for c in rows])
    return web.json_response({"consultations": [consultation_json(c, present[c.id]) for c in rows]})


async def get_consultation(request: web.Request) -> web.Response:
    staff = current_staff(request)
    async with request.app[DB]() as db:
        consultation = await request.app[CONSULTATIONS].get(db, staff, request.match_info["id"])
    await request.app[AUDIT].record(actor(request, staff), "consultation.view", f"consultation:{consultation.id}",
                                    consultation_id=consultation.id)
    present = await request.app[HUB].participants([consultation.id])
    return web.json_response(consultation_json(consultation, present[consultation.id]))


async def close_consultation(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    consultation = await request.app[CONSULTATIONS].close(staff, actor(request, staff), request.match_info["id"])
    return web.json_response({"status": "closed", "closed_at": rfc3339(consultation.closed_at)})


async def outbox(request: web.Request) -> web.Response:
    """Link messages of the consultations this user created (the links redacted)."""
    staff = current_staff(request)
    async with request.app[DB]() as db:
        messages = await request.app[CONSULTATIONS].outbox(db, staff, request.query.get("consultation"))
    return web.json_response({"messages": [message_json(m) for m in messages]})


async def carried_socket(request: web.Request) -> web.StreamResponse:
    """``GET /internal/rooms/{id}/ws``: a signalling socket another node of the
    cluster carries to this one, which holds the room (:mod:`evr.cluster`). Who it is
    was authenticated and audit-logged where it landed, and signed with the cluster's
    secret; anything unsigned, stale or for another room is a plain 404."""
    from .cluster import HANDOVER_HEADER

    hub = request.app[HUB]
    identity = hub.cluster.check_handover(request.headers.get(HANDOVER_HEADER)) if hub.cluster else None
    if identity is None or identity.get("consultation") != request.match_info["id"]:
        raise ApiError(404, "not_found", "Not found.")
    async with request.app[DB]() as db:
        consultation = await db.get(Consultation, identity["consultation"])
    if consultation is None or request.app[CONSULTATIONS].status(consultation) == "closed":
        raise ApiError(410, "closed", "This consultation is closed.")
    participant = hub.room(consultation).participant(identity["key"], identity["role"], identity["user_id"],
                                                     identity["name"])
    name, role, client = identity["who"]
    return await hub.serve(request, consultation, participant, Actor(name, role, client),
                           session_id=identity["session_id"], user_agent=identity["user_agent"])


async def staff_socket(request: web.Request) -> web.StreamResponse:
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    if not same_origin(request):
        raise forbidden("Cross-origin WebSocket refused.")
    async with request.app[AUDIT].transaction() as tx:  # the arrival and its audit entry together
        service = request.app[CONSULTATIONS]
        consultation = await service.get(tx.db, staff, request.match_info["id"])
        if service.status(consultation) == "closed":
            raise ApiError(410, "closed", "This consultation is closed.")
        await service.joined(tx.db, consultation, staff)
        # An incident's call: the first arrival is its 'arrived' time too, in this transaction.
        await request.app[INCIDENTS].joined(tx, consultation, actor(request, staff))
        tx.add(actor(request, staff), "consultation.join", f"consultation:{consultation.id}",
               consultation_id=consultation.id)
    return await request.app[HUB].join(request, consultation, f"staff:{staff.id}", staff.role, staff.id,
                                       staff.username, actor(request, staff), session_id=staff.session_id)
