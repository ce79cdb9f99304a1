"""The aiohttp application: routes, middlewares and the objects they share."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web

from . import openapi, pages, uploads
from .audit import AuditLog
from .auth import CALL_ROLES, CSRF_HEADER, SESSION_COOKIE, Authenticator, csrf_ok
from .config import Settings
from .consultations import Consultations, consultation_json, message_json, parse_new
from .db import make_engine, migrate, sessionmaker
from .errors import ApiError, error_response, forbidden
from .evidence import make_store
from .http import (
    AUDIT,
    AUTH,
    CLOCK,
    CONSULTATIONS,
    DB,
    HUB,
    NOTIFIER,
    RECORDINGS,
    SETTINGS,
    SIGNING_KEY,
    STAFF,
    STORE,
    actor,
    base_url,
    current_staff,
    read_json,
    same_origin,
    secure_cookies,
)
from .keys import load_signing_key
from .links import BINDING_COOKIE, victim_consultation
from .notify import Notifier, make_notifier
from .recording import api as recording_api
from .recording.service import Recordings
from .retention import web as retention_web
from .signalling import Hub
from .statements import api as statements_api
from .timeutil import Clock, rfc3339, utcnow

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)



def create_app(settings: Settings, clock: Clock = utcnow, notifier: Optional[Notifier] = None) -> web.Application:
    app = web.Application(middlewares=[security_headers, json_errors, staff_session], client_max_size=MAX_JSON_BODY)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[AUTH] = Authenticator(settings, clock)
    app[NOTIFIER] = notifier or make_notifier(settings)
    app[CONSULTATIONS] = Consultations(settings, clock, app[NOTIFIER])
    app.cleanup_ctx.append(_database)
    uploads.setup(app)
    recording_api.setup(app)
    retention_web.setup(app)
    statements_api.setup(app)
    openapi.setup(app)
    app.on_shutdown.append(_shutdown)
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
            web.get("/api/outbox", outbox),
            web.get("/console", pages.console),
            web.get("/j/{token}", victim_page),
            web.get("/j/{token}/ws", victim_socket),
            web.static("/static", pages.WEB_DIR, show_index=False, append_version=False),
        ]
    )
    return app


async def _database(app: web.Application) -> Any:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    await migrate(engine)
    app[DB] = sessionmaker(engine)
    app[AUDIT] = AuditLog(app[DB], app[CLOCK])
    app[STORE] = make_store(settings)
    app[SIGNING_KEY] = load_signing_key(settings)
    recordings = Recordings(settings, app[CLOCK], app[DB], app[STORE], app[SIGNING_KEY], app[AUDIT])
    closed = await recordings.recover()
    if closed:
        log.warning("closed %d recording(s) left open by an unclean stop", closed)
    app[RECORDINGS] = recordings
    app[HUB] = Hub(settings, app[CLOCK], app[DB], recordings if settings.recording else None)
    yield
    await app[STORE].close()
    await app[NOTIFIER].close()
    await engine.dispose()


async def _shutdown(app: web.Application) -> None:
    if HUB in app:
        await app[HUB].shutdown()
    if RECORDINGS in app:
        await app[RECORDINGS].shutdown()


# -- middlewares -------------------------------------------------------------


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Permissions-Policy", "camera=(self), microphone=(self), geolocation=(), display-capture=()")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.secure:
        headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
    if request.path.startswith(("/j/", "/api/")):
        # Nothing of a victim's visit or a staff answer may stay in a cache.
        headers["Cache-Control"] = "no-store"
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The contract's error shape for every API failure; never a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if request.path.startswith("/api/"):
            return error_response(500, "internal_error", "Something went wrong on the server.")
        return pages.message(500, "Something went wrong", "Please try again in a minute. If you are in danger call 999.")


@web.middleware
async def staff_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the session cookie on /api/ and demand the CSRF header on changes."""
    request[STAFF] = None
    if request.path.startswith("/api/") and request.path != "/api/login":
        async with request.app[DB]() as db:
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
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("username"), str) or not isinstance(
        body.get("password"), str
    ):
        raise ApiError(400, "bad_request", "Send a JSON object with username and password.")
    async with request.app[DB]() as db:
        staff, token = await request.app[AUTH].login(db, body["username"], body["password"])
    await request.app[AUDIT].record(actor(request, staff), "auth.login", f"user:{staff.username}")
    response = web.json_response({"username": staff.username, "role": staff.role, "csrf_token": staff.csrf_token})
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=secure_cookies(request), path="/",
        max_age=int(request.app[SETTINGS].session_ttl_hours * 3600),
    )
    return response


async def logout(request: web.Request) -> web.Response:
    staff = current_staff(request)
    async with request.app[DB]() as db:
        await request.app[AUTH].logout(db, staff)
    await request.app[AUDIT].record(actor(request, staff), "auth.logout", f"user:{staff.username}")
    response = web.json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    staff = current_staff(request)
    return web.json_response({"username": staff.username, "role": staff.role, "csrf_token": staff.csrf_token})


async def create_consultation(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    new = parse_new(await read_json(request))
    async with request.app[DB]() as db:
        consultation, join_url, message = await request.app[CONSULTATIONS].create(db, staff, new, base_url(request))
    # Which personal data was collected; never the values (the audit log is never erased).
    await request.app[AUDIT].record(
        actor(request, staff), "consultation.create", f"consultation:{consultation.id}",
        consultation_id=consultation.id,
        details={"collected": sorted(f"victim.{k}" for k in new.victim), "cad_ref": consultation.cad_ref,
                 "link_sent_by": new.notify},
    )
    body = {
        "id": consultation.id,
        "cad_ref": consultation.cad_ref,
        "status": consultation.status,
        "join_url": join_url,
        "expires_at": rfc3339(consultation.expires_at),
        "message": message_json(message) if message else None,
    }
    return web.json_response(body, status=201)


async def list_consultations(request: web.Request) -> web.Response:
    staff = current_staff(request)
    hub = request.app[HUB]
    async with request.app[DB]() as db:
        rows = await request.app[CONSULTATIONS].list(db, staff)
    return web.json_response({"consultations": [consultation_json(c, hub.participants(c.id)) for c in rows]})


async def get_consultation(request: web.Request) -> web.Response:
    staff = current_staff(request)
    async with request.app[DB]() as db:
        consultation = await request.app[CONSULTATIONS].get(db, staff, request.match_info["id"])
    await request.app[AUDIT].record(actor(request, staff), "consultation.view", f"consultation:{consultation.id}",
                                    consultation_id=consultation.id)
    return web.json_response(consultation_json(consultation, request.app[HUB].participants(consultation.id)))


async def close_consultation(request: web.Request) -> web.Response:
    staff = current_staff(request)
    staff.require(*CALL_ROLES, "admin")
    async with request.app[DB]() as db:
        consultation = await request.app[CONSULTATIONS].get(db, staff, request.match_info["id"])
        if consultation.status != "closed":
            consultation.status = "closed"
            consultation.closed_at = request.app[CLOCK]()
            consultation.closed_by = staff.id
            await db.commit()
            log.info("consultation closed (id=%s by=%s)", consultation.id, staff.username)
            await request.app[AUDIT].record(actor(request, staff), "consultation.close",
                                            f"consultation:{consultation.id}", consultation_id=consultation.id)
    await request.app[HUB].close(consultation.id)
    return web.json_response({"status": "closed", "closed_at": rfc3339(consultation.closed_at)})


async def outbox(request: web.Request) -> web.Response:
    staff = current_staff(request)
    async with request.app[DB]() as db:
        messages = await request.app[CONSULTATIONS].outbox(db, staff, request.query.get("consultation"))
    return web.json_response({"messages": [message_json(m) for m in messages]})


async def staff_socket(request: web.Request) -> web.StreamResponse:
    staff = current_staff(request)
    staff.require(*CALL_ROLES)
    if not same_origin(request):
        raise forbidden("Cross-origin WebSocket refused.")
    async with request.app[DB]() as db:
        service = request.app[CONSULTATIONS]
        consultation = await service.get(db, staff, request.match_info["id"])
        if consultation.status == "closed":
            raise ApiError(410, "closed", "This consultation is closed.")
        await service.joined(db, consultation, staff)
    await request.app[AUDIT].record(actor(request, staff), "consultation.join", f"consultation:{consultation.id}",
                                    consultation_id=consultation.id)
    hub = request.app[HUB]
    participant = hub.room(consultation).participant(f"staff:{staff.id}", staff.role, staff.id)
    return await hub.serve(request, consultation, participant)


# -- the victim --------------------------------------------------------------


async def victim_page(request: web.Request) -> web.StreamResponse:
    consultation, refusal = await victim_consultation(request)
    if refusal is not None:
        return refusal
    assert consultation is not None
    response = pages.victim()
    if consultation.binding_hash is None:
        async with request.app[DB]() as db:
            secret = await request.app[CONSULTATIONS].bind(db, consultation)
        if secret is None:  # another browser opened it a moment earlier
            return pages.link_in_use()
        response.set_cookie(
            BINDING_COOKIE, secret, httponly=True, samesite="Lax", secure=secure_cookies(request),
            path=f"/j/{request.match_info['token']}",
            max_age=int(request.app[SETTINGS].binding_cookie_days * 86400),
        )
    return response


async def victim_socket(request: web.Request) -> web.StreamResponse:
    consultation, refusal = await victim_consultation(request)
    if refusal is not None:
        return refusal
    assert consultation is not None
    if consultation.binding_hash is None:
        return pages.message(403, "Open the link first", "Open the link in your browser to join.")
    if not same_origin(request):
        return pages.message(403, "Refused", "Cross-origin connection refused.")
    hub = request.app[HUB]
    participant = hub.room(consultation).participant("victim", "victim")
    return await hub.serve(request, consultation, participant)
