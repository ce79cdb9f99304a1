"""Link delivery through a GOV.UK Notify-style HTTP gateway (a small local server)."""

from __future__ import annotations

import logging

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import ELIGIBLE

from evr import logs
from evr.notify import NotifyGatewayNotifier, compose, gateway_error

SERVICE_ID = "26785a09-ab16-4eb0-8407-a37497a57506"
SECRET = "3d844edf-8d35-48ac-975b-e847b4f122b0"
API_KEY = f"evr_test-{SERVICE_ID}-{SECRET}"
#: Text only the gateway's answer carries.
GATEWAY_TEXT = "gateway-says-zq81"


@pytest.fixture
async def gateway():
    """A stand-in for the gateway: checks the JWT and records each request."""
    received: list[dict] = []

    async def notification(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return web.json_response({"errors": [{"error": "AuthError"}]}, status=403)
        body = await request.json()
        received.append({"kind": request.match_info["kind"], "claims": claims, "body": body})
        if body.get("phone_number") == "07700 900999":
            # A refusal that quotes what it was sent, as gateways do.
            personalisation = body.get("personalisation", {})
            message = f"bad number 07700 900999 for {personalisation.get('link')} ({GATEWAY_TEXT})"
            return web.json_response({"errors": [{"error": "BadRequestError", "message": message}]}, status=400)
        return web.json_response({"id": f"notify-{len(received)}", "content": {"body": "..."}}, status=201)

    app = web.Application()
    app.router.add_post("/v2/notifications/{kind}", notification)
    server = TestServer(app)
    await server.start_server()
    yield server, received
    await server.close()


async def test_sms_goes_to_the_gateway_with_a_signed_token(gateway):
    server, received = gateway
    notifier = NotifyGatewayNotifier(str(server.make_url("")), API_KEY, sms_template="tmpl-sms")
    try:
        delivery = await notifier.send(compose("sms", "07700 900123", "https://evr.example/j/abc"))
    finally:
        await notifier.close()
    assert delivery.status == "sent" and delivery.ref == "notify-1" and delivery.provider == "notify"
    request = received[0]
    assert request["kind"] == "sms"
    assert request["claims"]["iss"] == SERVICE_ID
    assert request["body"]["phone_number"] == "07700 900123"
    assert request["body"]["template_id"] == "tmpl-sms"
    assert "https://evr.example/j/abc" in request["body"]["personalisation"]["body"]


async def test_email_and_gateway_errors_are_reported_not_raised(gateway):
    server, received = gateway
    notifier = NotifyGatewayNotifier(str(server.make_url("")), API_KEY)
    try:
        sent = await notifier.send(compose("email", "v@example.org", "https://evr.example/j/abc"))
        refused = await notifier.send(compose("sms", "07700 900999", "https://evr.example/j/abc"))
        bad_key = NotifyGatewayNotifier(str(server.make_url("")), f"x-{SERVICE_ID}-{'0' * 36}")
        unauthorised = await bad_key.send(compose("sms", "07700 900123", "u"))
        await bad_key.close()
        unreachable = NotifyGatewayNotifier("http://127.0.0.1:9", API_KEY)
        down = await unreachable.send(compose("sms", "07700 900123", "u"))
        await unreachable.close()
    finally:
        await notifier.close()
    assert sent.status == "sent" and received[0]["body"]["email_address"] == "v@example.org"
    assert refused.status == "failed" and refused.error == "gateway answered 400: BadRequestError"
    assert unauthorised.status == "failed" and "403" in unauthorised.error
    assert down.status == "failed" and "unreachable" in down.error


async def test_the_service_sends_through_the_gateway_and_keeps_the_outbox(gateway, settings, clock, users):
    from aiohttp.test_utils import TestClient
    from conftest import PASSWORD

    from evr.app import create_app
    from evr.auth import add_user
    from evr.http import DB

    server, received = gateway
    notifier = NotifyGatewayNotifier(str(server.make_url("")), API_KEY, sms_template="t")
    app = create_app(settings, clock=clock, notifier=notifier)
    async with TestClient(TestServer(app)) as client:
        async with app[DB]() as db:
            await add_user(db, "alice", "officer", PASSWORD, clock)
        login = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
        csrf = (await login.json())["csrf_token"]
        response = await client.post(
            "/api/consultations",
            json={"cad_ref": "CAD-7", "victim": {"phone": "07700 900123"}, "eligibility": ELIGIBLE, "notify": "sms"},
            headers={"X-CSRF-Token": csrf},
        )
        created = await response.json()
        assert response.status == 201 and created["message"]["status"] == "sent"
        assert received[0]["body"]["personalisation"]["link"] == created["join_url"]
        outbox = await (await client.get(f"/api/outbox?consultation={created['id']}")).json()
        assert outbox["messages"][0]["provider"] == "notify"


def test_key_without_service_id_and_secret_is_rejected():
    with pytest.raises(ValueError):
        NotifyGatewayNotifier("http://x", "too-short")


async def test_a_gateway_answer_is_reduced_to_its_status_and_codes(gateway):
    server, _ = gateway
    notifier = NotifyGatewayNotifier(str(server.make_url("")), API_KEY)
    try:
        refused = await notifier.send(compose("sms", "07700 900999", "https://evr.example/j/abc"))
    finally:
        await notifier.close()
    assert refused.error == "gateway answered 400: BadRequestError"
    assert gateway_error(502, None) == "gateway answered 502"
    assert gateway_error(400, {"errors": [{"error": "Bad error: 07700 900999"}, "x", {"error": 3}]}) == \
        "gateway answered 400"


async def test_no_log_record_carries_a_link_token_or_a_gateway_answer(gateway, settings, clock, caplog):
    """A notifier failure, then the victim's requests under the link (the access log
    included): no record, message or exception text, holds the token, the recipient or
    the gateway's words."""
    from aiohttp.test_utils import TestClient
    from conftest import PASSWORD, claim, eventually, link_path
    from sqlalchemy import select

    from evr.app import create_app
    from evr.auth import add_user
    from evr.db import OutboxMessage
    from evr.http import DB

    server, received = gateway
    notifier = NotifyGatewayNotifier(str(server.make_url("")), API_KEY, sms_template="t")
    app = create_app(settings, clock=clock, notifier=notifier)
    with caplog.at_level(logging.INFO), caplog.at_level(logging.DEBUG, logger="evr"):
        logs.install()  # what evr's main() does, on pytest's handlers
        async with TestClient(TestServer(app)) as client, TestClient(client.server) as phone:
            async with app[DB]() as db:
                await add_user(db, "alice", "officer", PASSWORD, clock)
            login = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
            csrf = (await login.json())["csrf_token"]
            response = await client.post(
                "/api/consultations", headers={"X-CSRF-Token": csrf},
                json={"cad_ref": "CAD-7", "victim": {"phone": "07700 900999"}, "eligibility": ELIGIBLE})
            created = await response.json()
            assert response.status == 201 and created["message"]["status"] == "failed"
            assert created["message"]["error"] == "gateway answered 400: BadRequestError"
            path = link_path(created["join_url"])
            assert (await phone.get(path)).status == 200
            assert (await claim(phone, path)).status == 200
            assert (await phone.get(path + "/uploads")).status == 200
            assert (await phone.get(path + "/nothing-here")).status == 404
            assert (await phone.get(path + "/ws")).status in (400, 403, 426)
            # The access log is written after the answer: wait for the last request's line.
            await eventually(lambda: [r for r in caplog.records if r.name == "aiohttp.access" and "/ws" in r.getMessage()],
                             what="the access log line of the last request")
            async with app[DB]() as db:
                kept = list(await db.scalars(select(OutboxMessage)))
    token = created["join_url"].rsplit("/", 1)[1]
    assert GATEWAY_TEXT in str(received) or received  # the gateway did see the message...
    assert kept[0].error == "gateway answered 400: BadRequestError" and token not in kept[0].body
    records = caplog.records
    assert any(r.name == "aiohttp.access" and "/j/…/uploads" in r.getMessage() for r in records)
    assert any("link message failed" in r.getMessage() for r in records)
    for record in records:
        text = " ".join(str(v) for v in vars(record).values()) + record.getMessage()
        for secret in (token, GATEWAY_TEXT, "07700 900999"):
            assert secret not in text, (secret, record.name, record.getMessage())


def test_redaction_covers_arguments_of_any_type_exceptions_and_extras():
    from yarl import URL

    token = "Zk3q" * 11
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "open %s from %r", (URL(f"http://h/j/{token}/ws"),
                               f"/j/{token}"), None)
    try:
        raise RuntimeError(f"lookup failed for /j/{token}/uploads")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    record.first_request_line = f"GET /j/{token} HTTP/1.1"
    assert logs.RedactLinks().filter(record)
    formatted = logging.Formatter("%(message)s %(first_request_line)s").format(record)
    assert token not in formatted and token not in " ".join(str(v) for v in vars(record).values())
    assert "open http://h/j/…/ws from '/j/…'" in formatted and "RuntimeError: lookup failed for /j/…/uploads" in formatted
    assert logs.redact_links(f"https://evr.example/j/{token}?x=1") == "https://evr.example/j/…?x=1"


async def test_a_notifier_that_raises_still_leaves_the_officer_the_link(settings, clock, caplog):
    """The consultation is committed before the message goes: a broken notifier must not
    cost its creator the only copy of the link, nor put the link in the log."""
    from aiohttp.test_utils import TestClient
    from conftest import PASSWORD

    from evr.app import create_app
    from evr.auth import add_user
    from evr.http import DB

    class Broken:
        name = "broken"

        async def send(self, message):
            raise RuntimeError(f"cannot send {message.url}")

        async def close(self):
            pass

    app = create_app(settings, clock=clock, notifier=Broken())
    with caplog.at_level(logging.INFO):
        logs.install()
        async with TestClient(TestServer(app)) as client:
            async with app[DB]() as db:
                await add_user(db, "alice", "officer", PASSWORD, clock)
            login = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
            response = await client.post(
                "/api/consultations", headers={"X-CSRF-Token": (await login.json())["csrf_token"]},
                json={"cad_ref": "CAD-8", "victim": {"email": "v@example.org"}, "eligibility": ELIGIBLE})
            created = await response.json()
            assert response.status == 201, created
            assert created["message"]["status"] == "failed"
            assert created["message"]["error"] == "notifier error: RuntimeError"
            assert created["join_url"] in created["message"]["body"]
            outbox = await (await client.get("/api/outbox")).json()
            assert outbox["messages"][0]["status"] == "failed"
    token = created["join_url"].rsplit("/", 1)[1]
    assert any("notifier broken failed" in r.getMessage() for r in caplog.records)
    assert all(token not in " ".join(str(v) for v in vars(r).values()) for r in caplog.records)


def test_evr_main_redacts_tokens_on_every_root_handler(monkeypatch, capsys):
    """``evr``'s main() puts the redaction on the root handlers: records from any
    logger (the access log, the app's error log) reach the output without the token."""
    import io

    from evr import cli

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    token = "Qw7" * 15
    logging.getLogger("aiohttp.access").warning('127.0.0.1 "GET /j/%s/uploads HTTP/1.1" 200', token)
    logging.getLogger("evr.app").warning("unhandled error on GET %s", f"/j/{token}/statements")
    assert token not in out.getvalue()
    assert '"GET /j/…/uploads HTTP/1.1" 200' in out.getvalue() and "GET /j/…/statements" in out.getvalue()


async def test_an_outcome_that_cannot_be_kept_still_leaves_the_officer_the_link(staff, monkeypatch):
    """After the consultation is committed, failing to note how the message went
    (the outbox row's update) answered 500 and lost the only copy of the link."""
    from evr import consultations

    def broken_update(*args, **kwargs):
        raise RuntimeError("database went away")

    officer = await staff()
    monkeypatch.setattr(consultations, "update", broken_update)
    created = await officer.create()  # asserts 201
    assert "/j/" in created["join_url"] and created["message"]["status"] == "outbox"
