"""Link delivery through a GOV.UK Notify-style HTTP gateway (a small local server)."""

from __future__ import annotations

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from conftest import ELIGIBLE
from evr.notify import NotifyGatewayNotifier, compose

SERVICE_ID = "26785a09-ab16-4eb0-8407-a37497a57506"
SECRET = "3d844edf-8d35-48ac-975b-e847b4f122b0"
API_KEY = f"evr_test-{SERVICE_ID}-{SECRET}"


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
            return web.json_response({"errors": [{"error": "BadRequestError", "message": "bad number"}]}, status=400)
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
    assert refused.status == "failed" and "400" in refused.error
    assert unauthorised.status == "failed" and "403" in unauthorised.error
    assert down.status == "failed" and "unreachable" in down.error


async def test_the_service_sends_through_the_gateway_and_keeps_the_outbox(gateway, settings, clock, users):
    from aiohttp.test_utils import TestClient

    from evr.app import create_app

    from conftest import PASSWORD
    from evr.app import DB
    from evr.auth import add_user

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
